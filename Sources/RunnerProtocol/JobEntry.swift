/// A job entry read from a jobs stream, validated.
public struct JobEntry: Sendable, Hashable {
    public var streamId: String
    public var queue: String
    public var jobId: String
    public var specJSON: [UInt8]
    public var spec: JobSpec
    public var attempt: Int
    /// The entry's `idempotency_key`, if it has one.
    public var idempotencyKey: String?

    /// The longest accepted job id.
    public static let maximumIdLength = 200

    /// The largest `attempt` an entry may carry. The job scripts raise attempts as Lua numbers, which Redis writes
    /// back with 14 significant digits: an attempt of 10^14 or more came back as `1e+14`, and the job, run once, was
    /// then rejected for its own next entry. This bound leaves room for any number of raises in practice.
    public static let maximumAttempt = 1_000_000_000

    /// Validates a job id (or, named by `what`, an idempotency key): non-empty, at most 200 bytes, no white space or
    /// control characters.
    public static func validateId(_ id: String, what: String = "job id") throws(JobSpecError) {
        guard !id.isEmpty else { throw JobSpecError("\(what) is empty") }
        guard id.utf8.count <= maximumIdLength else {
            throw JobSpecError("\(what) is longer than \(maximumIdLength) bytes")
        }
        guard !id.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0 == "\u{7f}" })
        else {
            throw JobSpecError("\(what) \"\(JobEntry.printable(id))\" contains white space or control characters")
        }
    }

    /// The text with control characters (and other non-printing scalars) written as `\u{..}`, so that an error
    /// message quoting untrusted input can never drive the terminal showing it. A text longer than 80 scalars is
    /// cut at its last space before that (mid-word when its second half has none) and ends in `…`.
    public static func printable(_ text: String) -> String {
        let limit = 80
        var scalars = Substring(text).unicodeScalars
        var cut = false
        if scalars.count > limit {
            scalars = scalars.prefix(limit - 1)
            if let space = scalars.lastIndex(of: " "),
                scalars.distance(from: scalars.startIndex, to: space) >= limit / 2
            {
                scalars = scalars[..<space]
            }
            cut = true
        }
        let out = escaped(String(String.UnicodeScalarView(scalars)))
        return cut ? out + "…" : out
    }

    /// The text with each control character (C0, DEL, C1: a line break, an escape sequence) or format character
    /// written as `\u{1b}`, as `printable` writes them, but never cut: for text shown whole whose every line must be
    /// one line, such as a log line's message and fields or what `runner top` shows of the pool.
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { !isVisible($0) }) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            out += isVisible(scalar) ? String(scalar) : "\\u{\(String(scalar.value, radix: 16))}"
        }
        return out
    }

    private static func isVisible(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value >= 0x20 && scalar.value != 0x7F && !(0x80..<0xA0).contains(scalar.value)
            && scalar.properties.generalCategory != .format
    }

    /// Validates the raw fields of a stream entry. Throws with a reason naming the problem.
    public init(streamId: String, queue: String, fields: [(String, [UInt8])]) throws(JobSpecError) {
        self.streamId = streamId
        self.queue = queue
        func value(_ name: String) -> [UInt8]? { fields.first(where: { $0.0 == name })?.1 }
        for name in [JobEntryField.id, JobEntryField.spec, JobEntryField.attempt, JobEntryField.idempotencyKey]
        where fields.lazy.filter({ $0.0 == name }).count > 1 {
            throw JobSpecError("entry has the field \"\(name)\" more than once")
        }

        guard let idBytes = value(JobEntryField.id) else { throw JobSpecError("entry has no \"id\" field") }
        guard let id = String(validating: idBytes, as: UTF8.self) else {
            throw JobSpecError("entry field \"id\" is not valid UTF-8")
        }
        try JobEntry.validateId(id)
        jobId = id

        guard let specBytes = value(JobEntryField.spec) else { throw JobSpecError("entry has no \"spec\" field") }
        specJSON = specBytes
        spec = try JobSpec(json: specBytes)

        if let attemptBytes = value(JobEntryField.attempt) {
            guard let text = String(validating: attemptBytes, as: UTF8.self), let n = Int(text), n >= 1 else {
                throw JobSpecError("entry field \"attempt\" must be a positive integer")
            }
            guard n <= JobEntry.maximumAttempt else {
                throw JobSpecError(
                    "entry field \"attempt\" is \(n), more than the largest attempt, \(JobEntry.maximumAttempt)")
            }
            attempt = n
        } else {
            attempt = 1
        }
        if let keyBytes = value(JobEntryField.idempotencyKey) {
            guard let key = String(validating: keyBytes, as: UTF8.self) else {
                throw JobSpecError("entry field \"idempotency_key\" is not valid UTF-8")
            }
            try JobEntry.validateId(key, what: "idempotency key")
            idempotencyKey = key
        } else {
            idempotencyKey = nil
        }
    }

    /// The job id of raw fields if there is a usable one, for reporting a rejected entry.
    public static func jobId(in fields: [(String, [UInt8])]) -> String? {
        guard let bytes = fields.first(where: { $0.0 == JobEntryField.id })?.1,
            let id = String(validating: bytes, as: UTF8.self), (try? validateId(id)) != nil
        else { return nil }
        return id
    }
}
