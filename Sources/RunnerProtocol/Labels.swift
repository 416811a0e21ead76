/// Labels as `key=value` pairs: what a runner advertises (`--label`) and what a job requires (spec `requires`).
///
/// Keys are 1 to 63 bytes of ASCII letters, digits, `.`, `_`, `-` and `/`; values are 1 to 256 bytes without
/// white space, control characters or `,`. So the canonical text (pairs sorted by key, `key=value` joined by `,`)
/// names one set of labels exactly, and any language can compute a requirement's id from it.
public struct LabelSet: Sendable, Hashable, CustomStringConvertible {
    /// The labels, key to value.
    public let values: [String: String]

    /// The most labels a runner or a requirement may have: they travel in every heartbeat.
    public static let maximumCount = 64

    /// An empty set (a runner without labels, a job without requirements).
    public init() { values = [:] }

    /// Validates every key and value.
    public init(_ values: [String: String]) throws(LabelError) {
        guard values.count <= LabelSet.maximumCount else {
            throw LabelError("\(values.count) labels; at most \(LabelSet.maximumCount) are allowed")
        }
        for key in values.keys.sorted() {
            try LabelSet.validate(key: key, value: values[key]!)
        }
        self.values = values
    }

    /// Parses `key=value` texts (`--label gpu=a100`); a key given twice is an error.
    public init(pairs: [String]) throws(LabelError) {
        guard pairs.count <= LabelSet.maximumCount else {
            throw LabelError("\(pairs.count) labels; at most \(LabelSet.maximumCount) are allowed")
        }
        var values: [String: String] = [:]
        for pair in pairs {
            guard let equals = pair.firstIndex(of: "=") else {
                throw LabelError("'\(JobEntry.printable(pair))' is not KEY=VALUE")
            }
            let key = String(pair[..<equals])
            let value = String(pair[pair.index(after: equals)...])
            try LabelSet.validate(key: key, value: value)
            guard values[key] == nil else { throw LabelError("label '\(JobEntry.printable(key))' is given twice") }
            values[key] = value
        }
        self.values = values
    }

    public var isEmpty: Bool { values.isEmpty }

    /// Whether these labels include every required key with the required value.
    public func satisfies(_ requirement: LabelSet) -> Bool {
        requirement.values.allSatisfy { values[$0.key] == $0.value }
    }

    /// Pairs sorted by key (byte order), `key=value`, joined by `,`: `gpu=a100,zone=eu`.
    public var canonical: String {
        values.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            .map { "\($0)=\(values[$0]!)" }.joined(separator: ",")
    }

    /// The id of this set as a requirement: FNV-1a 64 of the canonical text's UTF-8 bytes, 16 lowercase hex digits.
    public var requirementId: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in canonical.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// A JSON object of strings.
    public var json: JSONValue { .object(values.mapValues(JSONValue.string)) }

    public var description: String { canonical }

    /// Checks one label; the error names the key.
    public static func validate(key: String, value: String) throws(LabelError) {
        let keyBytes = Array(key.utf8)
        guard !keyBytes.isEmpty, keyBytes.count <= 63 else {
            throw LabelError("label key '\(JobEntry.printable(key))' must be 1 to 63 bytes")
        }
        let allowed = keyBytes.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A)
                || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
                || $0 == UInt8(ascii: "/")
        }
        guard allowed else {
            throw LabelError(
                "label key '\(JobEntry.printable(key))' may hold only letters, digits, '.', '_', '-' and '/'")
        }
        let valueBytes = value.utf8.count
        guard valueBytes > 0, valueBytes <= 256 else {
            throw LabelError("label '\(JobEntry.printable(key))' must have a value of 1 to 256 bytes")
        }
        let invalid = value.unicodeScalars.contains {
            $0 == "," || $0.value < 0x20 || $0.value == 0x7F || $0.properties.isWhitespace
        }
        guard !invalid else {
            throw LabelError(
                "label '\(JobEntry.printable(key))' has a value with white space, a control character or ','")
        }
    }
}

/// Why a label or a requirement was refused; the message names the label.
public struct LabelError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Keyspace {
    /// The queue name of the stream that holds `queue`'s jobs requiring `requirement`: `<queue>:req:<id>`, so its
    /// stream is `{nr}:jobs:<queue>:req:<id>` and every path that puts a job back on "its queue" keeps it there.
    public static func requirementQueue(_ queue: String, requirement: LabelSet) -> String {
        "\(queue)\(requirementQueueInfix)\(requirement.requirementId)"
    }

    /// What separates a queue from a requirement id in a requirement stream's queue name.
    public static let requirementQueueInfix = ":req:"

    /// The queue a (possibly requirement) queue name belongs to: `default` for `default:req:<id>`.
    public static func baseQueue(of queue: String) -> String {
        // A queue name has no colon (`Keyspace.isValidName`), so the first one starts the infix.
        guard let colon = queue.firstIndex(of: ":"), queue[colon...].hasPrefix(requirementQueueInfix) else {
            return queue
        }
        return String(queue[..<colon])
    }

    /// Hash of a queue's requirement streams: field = requirement id, value = the requirement as a JSON object:
    /// `{nr}:requirements:<queue>`.
    public func requirements(queue: String) -> String { "\(keyPrefix)requirements:\(queue)" }
}
