import Foundation
import Logging
import MeridianCore
import MeridianStorage
import NIOSSL
import PostgresNIO

extension PostgresStore {
    /// A factory opening a region's store in the database `config` names, the password read when the store opens
    /// (from the environment variable or file the cluster file names).
    /// With a `fence`, every change the store makes checks that this process still holds the region's lease at its
    /// epoch (a node sharing the database with others).
    public static func factory(_ config: PostgresStoreConfig, environment: [String: String] = ProcessInfo.processInfo.environment,
                               fence: LeaseFence? = nil, logger: Logger) -> StoreFactory {
        { context throws(MeridianError) in
            try await PostgresStore.open(try PostgresConnectionSettings.client(config, environment: environment), context: context, fence: fence,
                                         logger: logger)
        }
    }
}

/// A cluster file's PostgreSQL settings as a client configuration.
public enum PostgresConnectionSettings {
    /// - Throws: `invalid_config` when the password's variable or file is missing or the CA bundle is unreadable.
    public static func client(_ config: PostgresStoreConfig, environment: [String: String]) throws(MeridianError) -> PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS
        switch config.tls {
        case .disable:
            tls = .disable
        case .require:
            var settings = TLSConfiguration.makeClientConfiguration()
            settings.certificateVerification = .none
            tls = .require(settings)
        case .verifyFull:
            var settings = TLSConfiguration.makeClientConfiguration()
            settings.certificateVerification = .fullVerification
            if let file = config.rootCertificateFile {
                guard FileManager.default.isReadableFile(atPath: file) else {
                    throw MeridianError(.invalidConfig, "The PostgreSQL store's sslrootcert '\(file)' cannot be read: give the path of the CA bundle (PEM) that signed the database's certificate.")
                }
                settings.trustRoots = .file(file)
            }
            tls = .require(settings)
        }
        var client = PostgresClient.Configuration(host: config.host, port: config.port, username: config.user, password: try password(config.password, environment: environment),
                                                  database: config.database, tls: tls)
        client.options.connectTimeout = .seconds(5)
        return client
    }

    static func password(_ source: PostgresStoreConfig.PasswordSource?, environment: [String: String]) throws(MeridianError) -> String? {
        switch source {
        case nil:
            return nil
        case .environment(let name):
            guard let value = environment[name], !value.isEmpty else {
                throw MeridianError(.invalidConfig, "The PostgreSQL store's password comes from the environment variable \(name), which this node's process does not have. Set it (from a secret), or name another with password_env.")
            }
            return value
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8),
                  let line = text.split(separator: "\n", omittingEmptySubsequences: false).first, !line.isEmpty else {
                throw MeridianError(.invalidConfig, "The PostgreSQL store's password file '\(path)' is missing, unreadable or empty. Mount the secret there, or fix password_file.")
            }
            return String(line)
        }
    }
}
