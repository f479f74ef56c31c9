#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import MeridianCore

/// Files holding keys: written readable by their owner only (0600), and whole or not at all.
public enum SecretFile {
    /// The most bytes a key, certificate or bundle file may hold.
    public static let bytesMax = 1 << 20

    /// Writes `contents` to `path` with mode 0600: into a new temporary file created with that mode (never a
    /// window where another user could read it), synced, then renamed over `path`, so a reader (a node
    /// reloading its certificates) sees the old file or the new one, never half of one.
    /// - Throws: `MeridianError` `invalid_config` naming the file and the system's reason.
    public static func write(_ contents: String, to path: String, mode: mode_t = 0o600) throws(MeridianError) {
        let temporary = "\(path).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard descriptor >= 0 else { throw failure("cannot create", temporary) }
        let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: false)
        do {
            try handle.write(contentsOf: Data(contents.utf8))
        } catch {
            close(descriptor)
            unlink(temporary)
            throw failure("cannot write", temporary)
        }
        guard fchmod(descriptor, mode) == 0, fsync(descriptor) == 0 else {
            close(descriptor)
            unlink(temporary)
            throw failure("cannot sync", temporary)
        }
        close(descriptor)
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw failure("cannot move into place", path)
        }
    }

    /// Creates a directory (and its parents) readable by its owner only.
    public static func makeDirectory(_ path: String) throws(MeridianError) {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw MeridianError(.invalidConfig, "\(path): cannot create the directory: \(error.localizedDescription)", context: ["file": path])
        }
    }

    /// Reads a text file of at most ``bytesMax`` bytes.
    /// - Parameter what: What the file should hold, for the error message ("the signing key").
    public static func read(_ path: String, what: String) throws(MeridianError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw MeridianError(.invalidConfig, "\(path): cannot read \(what): \(String(cString: strerror(errno)))", context: ["file": path])
        }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: bytesMax + 1)) ?? Data()
        guard data.count <= bytesMax else {
            throw MeridianError(.invalidConfig, "\(path): \(what) is larger than \(bytesMax) bytes; is it the right file?", context: ["file": path])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw MeridianError(.invalidConfig, "\(path): \(what) is not text (PEM expected)", context: ["file": path])
        }
        return text
    }

    private static func failure(_ action: String, _ path: String) -> MeridianError {
        MeridianError(.invalidConfig, "\(path): \(action) the file: \(String(cString: strerror(errno)))", context: ["file": path])
    }
}

/// Where a region's root key comes from: the `MERIDIAN_ROOT_KEY` environment variable (base64 of 32 bytes), or a
/// file readable by its owner only. The key never leaves the region: nothing else reads or sends it.
public enum RootKeyFile {
    public static let environmentVariable = "MERIDIAN_ROOT_KEY"

    /// The root key from the environment, else from `path`. A file that does not exist is made (32 random bytes,
    /// mode 0600) only when `mayCreate` (a data directory that holds nothing yet): starting a store that holds
    /// wrapped keys with a new root key would make all of them unreadable.
    /// - Throws: `invalid_config` naming the variable or the file: missing, readable by others, or not 32 bytes.
    public static func load(path: String, environment: [String: String], mayCreate: Bool) throws(MeridianError) -> RegionKeyRing {
        if let text = environment[environmentVariable] {
            return try RegionKeyRing(text: text, source: environmentVariable)
        }
        var status = stat()
        if stat(path, &status) != 0 {
            guard errno == ENOENT, mayCreate else {
                throw MeridianError(.invalidConfig, "\(path): the region's root key is missing (\(String(cString: strerror(errno)))), and the data directory already holds data sealed under one. Restore that key file, or set \(environmentVariable).",
                                    context: ["file": path])
            }
            var generator = SystemRandomNumberGenerator()
            let bytes = (0..<RegionRootKey.byteCount).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            try SecretFile.write(Data(bytes).base64EncodedString() + "\n", to: path)
            return RegionKeyRing(single: try RegionRootKey(bytes: bytes, source: path))
        }
        guard status.st_mode & 0o077 == 0 else {
            throw MeridianError(.invalidConfig, "\(path): the root key file can be read by other users (mode \(String(status.st_mode & 0o777, radix: 8))); run `chmod 600 \(path)`.",
                                context: ["file": path])
        }
        return try RegionKeyRing(text: try SecretFile.read(path, what: "the region's root key"), source: path)
    }

    /// Writes the root keys to `path` (mode 0600, whole or not at all: a rename over the old file).
    public static func save(_ keys: RegionKeyRing, to path: String) throws(MeridianError) {
        try SecretFile.write(keys.text, to: path)
    }
}

/// The ids of the data keys a region erased, kept beside its root key file (`<root key file>.erasures`), outside
/// the data directory and so outside every backup of it. A backup restored later still holds the erased keys'
/// wraps: the node destroys them again from this file when it starts, so an erased subject never reads again, even
/// in a keyspace no other region holds. One line per key, `<keyspace> <id in hex>`; ids are random, not personal.
public struct ErasureLedger: Sendable {
    /// The most bytes the ledger may hold (about a million erasures).
    public static let bytesMax = 64 << 20
    public let path: String

    public init(rootKeyFile: String) { path = rootKeyFile + ".erasures" }

    /// Every erased key the ledger holds, by keyspace (empty when there is no ledger yet).
    /// - Throws: `invalid_config` naming the file and line when it is not a ledger, or is larger than ``bytesMax``.
    public func read() throws(MeridianError) -> [KeyspaceName: [DataKeyID]] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw MeridianError(.invalidConfig, "\(path): cannot read the erasure ledger: \(String(cString: strerror(errno)))", context: ["file": path])
        }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: Self.bytesMax + 1)) ?? Data()
        guard data.count <= Self.bytesMax else {
            throw MeridianError(.invalidConfig, "\(path): the erasure ledger is larger than \(Self.bytesMax) bytes; is it the right file?", context: ["file": path])
        }
        var erased: [KeyspaceName: [DataKeyID]] = [:]
        let text = String(decoding: data, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
        for (index, line) in lines.enumerated() {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let keyspace = try? KeyspaceName(String(parts[0])), let bytes = Hex.decode(String(parts[1])),
                  let id = try? DataKeyID(bytes: bytes) else {
                // A last line cut short by a crash mid-append (never synced, so never relied on) is left out; the
                // next start adds its key again from the store.
                if index == lines.count - 1 && !text.hasSuffix("\n") { break }
                throw MeridianError(.invalidConfig, "\(path), line \(index + 1): not '<keyspace> <key id in hex>'. The erasure ledger was changed by hand; restore it from the region's other copy, or remove the line.",
                                    context: ["file": path, "line": String(index + 1)])
            }
            erased[keyspace, default: []].append(id)
        }
        return erased
    }

    /// Appends erased keys, synced before it returns.
    /// - Throws: `storage_failure` naming the file when it cannot be written.
    public func append(keyspace: KeyspaceName, ids: [DataKeyID]) throws(MeridianError) {
        guard !ids.isEmpty else { return }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw MeridianError(.storageFailure, "\(path): cannot open the erasure ledger: \(String(cString: strerror(errno)))", context: ["file": path])
        }
        defer { close(descriptor) }
        let text = ids.map { "\(keyspace.rawValue) \($0)\n" }.joined()
        let written = text.utf8CString.withUnsafeBufferPointer { buffer in write(descriptor, buffer.baseAddress, buffer.count - 1) }
        guard written == text.utf8.count, fsync(descriptor) == 0 else {
            throw MeridianError(.storageFailure, "\(path): cannot write the erasure ledger: \(String(cString: strerror(errno)))", context: ["file": path])
        }
    }
}
