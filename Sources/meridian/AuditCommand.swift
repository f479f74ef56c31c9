import ArgumentParser
import Crypto
import Foundation
import MeridianCore
import MeridianHarness

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "Check every region's audit trail.", subcommands: [AuditVerify.self, AuditPairs.self])
}

/// Reads every region's trail (`GET /v1/audit`, paged) and the checkpoints of it its peers witnessed.
struct AuditReader {
    let config: ClusterConfig

    struct Trail {
        let region: RegionName
        let anchor: AuditAnchor
        let publicKey: [UInt8]
        let records: [AuditRecord]
    }

    func trail(_ region: RegionName) async throws -> Trail {
        let connection = try await connect(region)
        defer { Task { await connection.close() } }
        var records: [AuditRecord] = []
        var anchor = AuditAnchor(), publicKey: [UInt8] = []
        var after: UInt64 = 0
        for _ in 0..<100_000 {
            let page = try await connection.request("GET", "/v1/audit?after=\(after)&limit=10000")
            guard page.status == 200, let object = try JSONSerialization.jsonObject(with: Data(page.body)) as? [String: Any] else {
                throw CLIFailure("\(region): GET /v1/audit answered \(page.status): \(page.text)")
            }
            let anchorObject = object["anchor"] as? [String: Any] ?? [:]
            anchor = AuditAnchor(sequence: UInt64(anchorObject["sequence"] as? Int ?? 0), hash: Self.bytes(anchorObject["hash"] as? String ?? "") ?? AuditChain.genesis)
            publicKey = Self.bytes(object["public_key"] as? String ?? "") ?? []
            let items = object["records"] as? [[String: Any]] ?? []
            for item in items {
                guard let sequence = item["sequence"] as? Int, let time = item["time_ms"] as? Int, let kindText = item["kind"] as? String,
                      let kind = AuditRecord.Kind(rawValue: kindText), let fields = item["fields"] as? [String: String],
                      let previous = Self.bytes(item["previous"] as? String ?? ""), let hash = Self.bytes(item["hash"] as? String ?? "") else {
                    throw CLIFailure("\(region): an audit record after \(after) cannot be read: \(item)")
                }
                records.append(AuditRecord(sequence: UInt64(sequence), timeMs: UInt64(time), region: region, kind: kind, fields: fields, previous: previous, hash: hash))
            }
            guard let last = records.last, !items.isEmpty else { break }
            after = last.sequence
        }
        return Trail(region: region, anchor: anchor, publicKey: publicKey, records: records)
    }

    /// The checkpoints of `region`'s trail each other region witnessed, and the key each pinned for it.
    func witnessed(_ region: RegionName) async throws -> [(witness: RegionName, key: [UInt8]?, checkpoints: [AuditCheckpoint])] {
        var all: [(RegionName, [UInt8]?, [AuditCheckpoint])] = []
        for witness in config.regions.map(\.name) where witness != region {
            let connection = try await connect(witness)
            defer { Task { await connection.close() } }
            let answer = try await connection.request("GET", "/v1/audit?witnessed=\(region)")
            guard answer.status == 200, let object = try JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any] else {
                throw CLIFailure("\(witness): GET /v1/audit?witnessed=\(region) answered \(answer.status): \(answer.text)")
            }
            let checkpoints = (object["checkpoints"] as? [[String: Any]] ?? []).compactMap { item -> AuditCheckpoint? in
                guard let sequence = item["sequence"] as? Int, let hash = Self.bytes(item["hash"] as? String ?? ""),
                      let signature = Self.bytes(item["signature"] as? String ?? "") else { return nil }
                return AuditCheckpoint(region: region, sequence: UInt64(sequence), hash: hash, signature: signature)
            }
            all.append((witness, (object["public_key"] as? String).flatMap(Self.bytes), checkpoints))
        }
        return all
    }

    private func connect(_ region: RegionName) async throws -> HTTPConnection {
        guard let endpoint = config.region(region)?.client else { throw CLIFailure("Region '\(region)' is not in the cluster file.") }
        do {
            return try await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, timeoutSeconds: 30)
        } catch {
            throw CLIFailure("cannot reach \(region) at \(endpoint): is the cluster running?")
        }
    }

    static func bytes(_ hex: String) -> [UInt8]? { Hex.decode(hex) }
}

struct AuditVerify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Verify every region's audit trail: its hash chain, and the checkpoints of it the other regions witnessed.",
        discussion: "A record changed in place breaks the chain; records deleted from the end, or a chain recomputed from a changed record on, disagree with a checkpoint a peer holds. Exits 1 and says where when a trail is broken.")

    @OptionGroup var cluster: ConfigOption
    @Option(help: "Only this region's trail.") var region: String?

    func run() async throws {
        let config = try cluster.load()
        let reader = AuditReader(config: config)
        var regions = config.regions.map(\.name)
        if let region {
            do { regions = [try RegionName(region)] } catch { throw ValidationError(error.message) }
        }
        var broken = 0
        for region in regions {
            let trail = try await reader.trail(region)
            let witnessed = try await reader.witnessed(region)
            // The key the witnesses pinned, not the one the region states now: a region that rewrote its trail could
            // sign with a new key.
            let pinned = witnessed.compactMap(\.key).first ?? trail.publicKey
            var verdict: AuditVerdict = .intact(head: 0, checkpoints: 0)
            if witnessed.contains(where: { $0.key != nil && $0.key != pinned }) {
                verdict = .broken(sequence: 0, reason: "\(region)'s peers pinned different audit keys for it: \(witnessed.map { "\($0.witness)" }.joined(separator: ", ")).")
            } else if trail.publicKey != pinned {
                verdict = .broken(sequence: 0, reason: "\(region) now signs with another audit key than the one its peers pinned: its root key was replaced.")
            } else {
                let key = try? Curve25519.Signing.PublicKey(rawRepresentation: pinned)
                verdict = AuditVerifier.verify(trail.records, region: region, anchor: (trail.anchor.sequence, trail.anchor.hash),
                                               checkpoints: witnessed.flatMap(\.checkpoints), key: key)
            }
            switch verdict {
            case .intact(let head, let checkpoints):
                say("\(region): intact, \(trail.records.count) records through \(head), \(checkpoints) checkpoints witnessed by \(witnessed.filter { !$0.checkpoints.isEmpty }.map(\.witness.rawValue).joined(separator: ", "))")
                // Restores are the one gap a trail may have: each is shown, with the records it lost.
                for record in trail.records where record.kind == .restore {
                    say("  restored from a backup at record \(record.sequence): records \(record.fields["lost_from"] ?? "?") to \(record.fields["lost_through"] ?? "?") were lost with the backup's age")
                }
            case .broken(let sequence, let reason):
                broken += 1
                say("\(region): BROKEN at record \(sequence): \(reason)")
            }
        }
        if broken > 0 { throw ExitCode(1) }
    }
}

struct AuditPairs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pairs",
        abstract: "Match every batch of restricted data one region's trail says it sent with the batch its peer's trail says it received.",
        discussion: "A batch is matched by sender, receiver, keyspace, sequence range and digest. A batch received that its sender never recorded, or one whose digest differs, is an alarm; a batch sent but not received can be one a stream lost on its way (the sender sends it again). Exits 1 on any unmatched batch.")

    @OptionGroup var cluster: ConfigOption

    func run() async throws {
        let config = try cluster.load()
        let reader = AuditReader(config: config)
        var sent: [String: Int] = [:], received: [String: Int] = [:]
        for region in config.regions.map(\.name) {
            let trail = try await reader.trail(region)
            for record in trail.records {
                let f = record.fields
                switch record.kind {
                case .replicationSent:
                    sent["\(region)→\(f["peer"] ?? "?") \(f["keyspace"] ?? "?") \(f["from"] ?? "?")…\(f["through"] ?? "?") \(f["digest"] ?? "?")", default: 0] += 1
                case .replicationReceived:
                    received["\(f["origin"] ?? "?")→\(region) \(f["keyspace"] ?? "?") \(f["from"] ?? "?")…\(f["through"] ?? "?") \(f["digest"] ?? "?")", default: 0] += 1
                default:
                    break
                }
            }
        }
        var unmatched = 0
        for (batch, count) in sent.sorted(by: { $0.key < $1.key }) where received[batch, default: 0] < count {
            unmatched += 1
            say("SENT, NOT RECEIVED: \(batch) (sent \(count), received \(received[batch, default: 0]))")
        }
        for (batch, count) in received.sorted(by: { $0.key < $1.key }) where sent[batch, default: 0] < count {
            unmatched += 1
            say("RECEIVED, NOT SENT: \(batch) (received \(count), sent \(sent[batch, default: 0]))")
        }
        say("audit pairs: \(sent.values.reduce(0, +)) batches sent, \(received.values.reduce(0, +)) received, \(unmatched) unmatched")
        if unmatched > 0 { throw ExitCode(1) }
    }
}
