/// The built-in three-region demo cluster that `meridian up` starts when given no file.
public enum DemoCluster {
    /// Round-trip times between the demo regions, in ms, from shared/latency/rtt-ms.csv (measured column).
    public static let rttMs: [(String, String, Int)] = [
        ("us-east", "eu-west", 81),
        ("us-east", "ap-southeast", 230),
        ("eu-west", "ap-southeast", 170),
    ]

    /// The fiber floor RTT, in ms, between two demo regions (shared/latency/rtt-ms.csv), when known: what no
    /// network between them can beat.
    public static func fiberFloorMs(_ a: RegionName, _ b: RegionName) -> Double? {
        let floors: [Set<String>: Double] = [["us-east", "eu-west"]: 55, ["us-east", "ap-southeast"]: 155, ["eu-west", "ap-southeast"]: 109]
        return floors[[a.rawValue, b.rawValue]]
    }

    /// The demo cluster file, with comments, as `meridian config demo` prints it.
    public static let yaml: String = """
        # Meridian demo cluster: three regions on one machine.
        # Copy this file, edit it, and start it with: meridian up --config FILE
        cluster: demo

        regions:
          - name: us-east
            client: 127.0.0.1:7101   # HTTP API
            peer: 127.0.0.1:7201     # replication streams
          - name: eu-west
            client: 127.0.0.1:7102
            peer: 127.0.0.1:7202
          - name: ap-southeast
            client: 127.0.0.1:7103
            peer: 127.0.0.1:7203

        # The emulated WAN between regions (round-trip times from shared/latency/rtt-ms.csv).
        # `meridian wan` runs one delaying proxy per directed link on base_port, base_port+1, ...
        wan:
          admin: 127.0.0.1:7300
          base_port: 7310
          latency_scale: 1.0
          jitter_ms: 0
          rtt_ms:
        \(rttMs.map { "    - { between: [\($0.0), \($0.1)], ms: \($0.2) }" }.joined(separator: "\n"))

        limits:
          value_bytes_max: 1048576
          list_limit_max: 1000
          commit_batch_max: 512

        # How clients reach the regions: `meridian gateway` listens here, and sends each request to the region nearest
        # the client's country (from CloudFront-Viewer-Country or CF-IPCountry), skipping regions the cluster marks down.
        routing:
          gateway: 127.0.0.1:7100
          country_regions:
            US: [us-east, eu-west, ap-southeast]
            CA: [us-east, eu-west, ap-southeast]
            BR: [us-east, eu-west, ap-southeast]
            DE: [eu-west, us-east, ap-southeast]
            FR: [eu-west, us-east, ap-southeast]
            GB: [eu-west, us-east, ap-southeast]
            JP: [ap-southeast, eu-west, us-east]
            SG: [ap-southeast, eu-west, us-east]
            AU: [ap-southeast, us-east, eu-west]
            IN: [ap-southeast, eu-west, us-east]
            "*": [us-east, eu-west, ap-southeast]

        keyspaces:
          # Active-passive: us-east takes every write; majority acks survive the loss of any region.
          - name: accounts
            topology: single-leader
            leader: us-east
            ack: majority
            consistency: { default: strong }
            failover: { order: [us-east, eu-west, ap-southeast], missed_heartbeats: 5, failback: true }

          # Active-active: every region writes; the highest hybrid logical clock wins.
          - name: profiles
            topology: multi-leader
            conflict: lww
            ack: async
            consistency: { default: session }
            cache: { ttl_ms: 0 }

          # Active-active counters and sets that merge without losing an increment.
          - name: likes
            topology: multi-leader
            conflict: crdt
            ack: async
            consistency: { default: eventual }

          # Active-active with concurrent versions kept for the application to resolve.
          - name: carts
            topology: multi-leader
            conflict: siblings
            ack: async
            consistency: { default: session }

          # Concurrent writes resolve in favour of the region listed first.
          - name: inventory
            topology: multi-leader
            conflict: region-priority
            priority: [us-east, eu-west, ap-southeast]
            ack: majority

          # A seat booked in two regions at once goes to the first booking (lowest timestamp).
          - name: bookings
            topology: multi-leader
            conflict: fww
            ack: async

          # EU personal data: stored only in eu-west; other regions proxy to it.
          - name: eu_users
            topology: geo-partitioned
            home: eu-west
            residency: { regions: [eu-west], access: proxy, classification: restricted }
            ack: async
            consistency: { default: session }

        """

    /// A demo cluster file with each region given in `urls` stored in PostgreSQL at its URL.
    public static func withPostgresStores(_ yaml: String, _ urls: [RegionName: String]) -> String {
        var lines = yaml.components(separatedBy: "\n")
        var region: String?
        var index = 0
        while index < lines.count {
            let line = lines[index]
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("- name: ") { region = String(trimmed.dropFirst("- name: ".count)) }
            if trimmed.hasPrefix("peer: "), let name = region, let url = urls.first(where: { $0.key.rawValue == name })?.value {
                let indent = String(line.prefix { $0 == " " })
                lines.insert("\(indent)store: { kind: postgres, url: \"\(url)\" }", at: index + 1)
                region = nil
                index += 1
            }
            index += 1
        }
        return lines.joined(separator: "\n")
    }
}
