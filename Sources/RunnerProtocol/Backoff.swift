/// How long a job waits before its next attempt after a failed one: exponential, capped, with jitter.
///
/// The n-th retry (n = failures so far, from 1) waits `min(max_ms, initial_ms * multiplier^(n-1))`, then jitter:
/// `equal` (the default) picks uniformly in [d/2, d], `full` in [0, d], `none` waits d.
public struct Backoff: Sendable, Hashable {
    /// How the delay is spread, so that jobs failing together do not all retry at once.
    public enum Jitter: String, Sendable, CaseIterable {
        case equal
        case full
        case none
    }

    public var initialMs: Int
    public var maxMs: Int
    public var multiplier: Double
    public var jitter: Jitter

    public static let defaultInitialMs = 1000
    public static let defaultMaxMs = 60_000
    public static let defaultMultiplier = 2.0

    public init(
        initialMs: Int = Backoff.defaultInitialMs, maxMs: Int = Backoff.defaultMaxMs,
        multiplier: Double = Backoff.defaultMultiplier, jitter: Jitter = .equal
    ) {
        self.initialMs = initialMs
        self.maxMs = max(maxMs, initialMs)
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// JSON field names of `spec.backoff`.
    public enum Key {
        public static let initialMs = "initial_ms"
        public static let maxMs = "max_ms"
        public static let multiplier = "multiplier"
        public static let jitter = "jitter"
        public static let all = [initialMs, maxMs, multiplier, jitter]
    }

    init(fields: [String: JSONValue]) throws(JobSpecError) {
        let initial = try JobSpec.positiveInt(fields[Key.initialMs], name: "backoff.\(Key.initialMs)")
        let maximum = try JobSpec.positiveInt(fields[Key.maxMs], name: "backoff.\(Key.maxMs)")
        var multiplier = Backoff.defaultMultiplier
        switch fields[Key.multiplier] {
        case nil, .null?: break
        case .int(let i)? where i >= 1: multiplier = Double(i)
        case .double(let d)? where d >= 1 && d.isFinite: multiplier = d
        case let other?:
            throw JobSpecError("spec.backoff.multiplier must be a number of at least 1, got \(other.serialized)")
        }
        var jitter = Jitter.equal
        switch fields[Key.jitter] {
        case nil, .null?: break
        case .string(let name)?:
            guard let known = Jitter(rawValue: name) else {
                throw JobSpecError("spec.backoff.jitter must be \"equal\", \"full\" or \"none\", got \"\(name)\"")
            }
            jitter = known
        case let other?: throw JobSpecError("spec.backoff.jitter must be a string, got \(other.typeName)")
        }
        let initialMs = initial ?? Backoff.defaultInitialMs
        if let maximum, maximum < initialMs {
            throw JobSpecError("spec.backoff.max_ms (\(maximum)) is smaller than initial_ms (\(initialMs))")
        }
        self.init(
            initialMs: initialMs, maxMs: maximum ?? max(Backoff.defaultMaxMs, initialMs), multiplier: multiplier,
            jitter: jitter)
    }

    /// The longest delay, in ms (about 146 million years): a spec may give any `initial_ms` or `max_ms` up to
    /// `Int.max`, and the delay must stay a whole number of ms that Redis's clock plus it can hold.
    public static let longestDelayMs = 1 << 62

    /// The delay before the retry that follows the `failures`-th failed attempt (1 for the first), in ms, at most
    /// `longestDelayMs`. `random` is uniform in [0, 1): the caller's randomness, so the computation stays testable.
    public func delayMs(afterFailures failures: Int, random: Double) -> Int {
        var delay = Double(initialMs)
        for _ in 1..<max(1, failures) {
            delay *= multiplier
            if delay >= Double(maxMs) { break }
        }
        let capped = min(delay, Double(maxMs))
        let spread: Double
        switch jitter {
        case .none: spread = capped
        case .full: spread = capped * random
        case .equal: spread = capped / 2 + capped / 2 * random
        }
        // Double(Int.max) is 2^63, one past Int.max: converting it (or more) would trap.
        return max(0, Int(min(spread.rounded(.down), Double(Backoff.longestDelayMs))))
    }

    /// The backoff as JSON, in the documented form.
    public var json: JSONValue {
        [
            Key.initialMs: .int(initialMs), Key.maxMs: .int(maxMs),
            // A whole multiplier beyond Int's range (1e300 is one) stays a double: converting it would trap.
            Key.multiplier: Int(exactly: multiplier).map(JSONValue.int) ?? .double(multiplier),
            Key.jitter: .string(jitter.rawValue),
        ]
    }
}
