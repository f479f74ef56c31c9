import HTTPTypes
import MeridianCore

/// The `Meridian-*` headers of the v1 API, as DESIGN.md lists them: every request option is also accepted as
/// a query parameter of the same name without the prefix, lower-case (``queryName``).
public enum MeridianHeader {
    // Request options.
    /// The read's consistency level: `strong`, `bounded`, `session`, `prefix` or `eventual`.
    public static let consistency = HTTPField.Name("Meridian-Consistency")!
    /// A bounded read's staleness bound, in ms.
    public static let maxStalenessMs = HTTPField.Name("Meridian-Max-Staleness-Ms")!
    /// The session token (request and answer).
    public static let session = HTTPField.Name("Meridian-Session")!
    /// A write's acknowledgement mode: `async`, `majority` or `all`.
    public static let ack = HTTPField.Name("Meridian-Ack")!
    /// A `siblings` write's causal context: the versions its client read.
    public static let context = HTTPField.Name(CausalContextToken.header)!
    /// A write's idempotency key: a retry carrying it gets the first attempt's outcome (the IETF draft's name, no prefix).
    public static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    /// Whose data a write to a sealed keyspace is (the unit of erasure), instead of the keyspace's subject rule.
    public static let subject = HTTPField.Name("Meridian-Subject")!

    // Answers.
    /// The region that served the request.
    public static let region = HTTPField.Name("Meridian-Region")!
    /// The term of a single-leader keyspace's leader that took the write or served the read.
    public static let epoch = HTTPField.Name("Meridian-Epoch")!
    /// How stale a replica read may be, in ms.
    public static let stalenessMs = HTTPField.Name("Meridian-Staleness-Ms")!
    /// The region a forwarded request was served by.
    public static let forwardedTo = HTTPField.Name("Meridian-Forwarded-To")!
    /// `true` on the answer to a retried idempotent write: it is the first attempt's outcome, nothing was applied again.
    public static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
    /// `local; home=REGION` on an idempotent write a multi-leader region took itself because the key's idempotency
    /// home could not be reached: a retry whose first attempt reached that home may apply twice.
    public static let idempotency = HTTPField.Name("Meridian-Idempotency")!

    /// The query parameter that stands for a request option's header when the header is absent.
    public static func queryName(_ header: HTTPField.Name) -> String {
        String(header.canonicalName.lowercased().dropFirst("meridian-".count))
    }
}
