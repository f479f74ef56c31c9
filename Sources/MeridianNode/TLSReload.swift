import Hummingbird
import HummingbirdCore
import Logging
import MeridianCore
import MeridianSecurity
import NIOCore
import NIOHTTPTypes
import NIOSSL
import UnixSignals

extension RegionNode {
    /// The client API's server: HTTP/1.1, inside TLS when the cluster file asks for HTTPS. Each connection takes
    /// the TLS context current when it is accepted, so a reload needs no restart.
    /// The point routes (`PointRouteHandler`) are answered on the connection's event loop, the rest by Hummingbird.
    func apiServer(points: PointRouteHandler.Service) -> HTTPServerBuilder {
        let holdsDuties = self.configuration.holdsDuties
        let configuration = HTTP1Channel.Configuration(additionalChannelHandlers: [
            DutyGate<HTTPRequestPart, HTTPResponsePart>(holdsDuties), PointRouteHandler(service: points),
        ])
        let accepted = self.acceptedClients
        guard let tls, tls.config.clientAPI else {
            return HTTPServerBuilder { responder in
                HeldUntilTakenUp(base: HTTP1Channel(responder: responder, configuration: configuration), accepted: accepted)
            }
        }
        return HTTPServerBuilder { responder in
            HeldUntilTakenUp(base: ReloadingTLSChannel(base: HTTP1Channel(responder: responder, configuration: configuration), tls: tls),
                             accepted: accepted)
        }
    }

    /// Re-reads the certificate, key and bundle files every `reload_interval_ms`, and at once on SIGHUP. When they
    /// changed and make a working set, new connections use them and every peer stream reconnects to move to
    /// them (each resumes from its last acknowledgement: nothing acknowledged is lost). A set that does not work
    /// (half-written, a key that is not the certificate's) is logged and the old one kept.
    func watchCertificates(_ hangups: UnixSignalsSequence) async {
        guard let tls else { return }
        let (checks, check) = AsyncStream<String>.makeStream(bufferingPolicy: .bufferingNewest(1))
        await withDiscardingTaskGroup { tasks in
            tasks.addTask {
                for await _ in hangups { check.yield("SIGHUP") }
            }
            tasks.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(tls.config.reloadIntervalMs))
                    check.yield("timer")
                }
                check.finish()
            }
            var lastFailure: String?
            for await trigger in checks {
                let outcome = tls.reloadIfChanged()
                if case .failed = outcome {} else { lastFailure = nil }
                switch outcome {
                case .unchanged:
                    if trigger == "SIGHUP" { logger.info("SIGHUP: the TLS files are unchanged") }
                case .reloaded(let contexts):
                    metrics.recordTLSReload(outcome: "reloaded")
                    logger.notice("reloaded the TLS certificates; peer streams reconnect with them", metadata: [
                        "trigger": "\(trigger)", "not_valid_after": "\(contexts.notValidAfter)", "trusted": "\(contexts.trusted.joined(separator: "; "))",
                    ])
                    replicator.reconnectAll()
                    audit?.record(.configChange, ConfigurationAudit.tlsReloadFields(configuration.cluster, notValidAfter: "\(contexts.notValidAfter)",
                                                                                    trusted: contexts.trusted))
                case .failed(let error):
                    // Once per problem: a file being rewritten fails one check, a wrong one every check until fixed.
                    guard error.message != lastFailure || trigger == "SIGHUP" else { break }
                    lastFailure = error.message
                    metrics.recordTLSReload(outcome: "failed")
                    logger.error("the TLS files changed but cannot be used; keeping the previous ones", metadata: ["error": "\(error.message)"])
                }
                if Task.isCancelled { break }
            }
            tasks.cancelAll()
        }
    }
}

/// HTTP/1.1 inside TLS, with the context current when each connection is accepted.
struct ReloadingTLSChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let tls: NodeTLS

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try tls.secureClientConnection(channel)
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

extension ReloadingTLSChannel: HTTPChannelHandler where Base: HTTPChannelHandler {
    var responder: HTTPChannelHandler.Responder { base.responder }
}
