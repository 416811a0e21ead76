/// The version of the Redis protocol this build speaks. Every entry the runner writes carries it in field `v`.
///
/// Changes within a major version only add fields, event types and states; a new major version lives under a
/// new key prefix, so old and new pools never read each other's entries.
public enum ProtocolVersion {
    /// Current major version.
    public static let current = 1
    /// The field name carrying the version on stream entries and result hashes.
    public static let field = "v"
}
