# shellcheck shell=bash
# write_wrk_scripts DIR KEYS: writes DIR/put.lua (PUTs of 100-byte values to keys k0, k1, ... in order, wrapping at
# KEYS, so a run of at least KEYS requests writes every key) and DIR/get.lua (GETs spread over the same keys), for
# wrk against a node's `bench` keyspace.
write_wrk_scripts() {
  local dir=$1 keys=$2
  cat > "$dir/put.lua" <<LUA
local n = -1
local value = string.rep("x", 100)
request = function()
  n = n + 1
  return wrk.format("PUT", "/v1/kv/bench/k" .. (n % $keys), {["Content-Type"] = "application/octet-stream"}, value)
end
LUA
  cat > "$dir/get.lua" <<LUA
local n = 0
request = function()
  n = n + 7919
  return wrk.format("GET", "/v1/kv/bench/k" .. (n % $keys))
end
LUA
}
