import Foundation
import RunnerProtocol
import Synchronization

/// Log lines on stderr: plain text for people, or JSON lines for machines. Either way one call writes one line:
/// the text format escapes control characters in the message and each field (`JobEntry.escaped`), JSON its strings.
public struct Logger: Sendable {
    public enum Level: Int, Sendable, Comparable, CaseIterable {
        case debug, info, warning, error
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        public var name: String {
            switch self {
            case .debug: "debug"
            case .info: "info"
            case .warning: "warning"
            case .error: "error"
            }
        }
        public init?(name: String) {
            guard let level = Level.allCases.first(where: { $0.name == name.lowercased() }) else { return nil }
            self = level
        }
    }

    public enum Format: String, Sendable, CaseIterable {
        case text
        case json
    }

    public var level: Level
    public var format: Format
    public var label: String
    private let sink: @Sendable (String) -> Void

    /// A logger writing to standard error.
    public init(label: String, level: Level = .info, format: Format = .text) {
        self.init(label: label, level: level, format: format, sink: Logger.standardError)
    }

    public init(label: String, level: Level, format: Format, sink: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.level = level
        self.format = format
        self.sink = sink
    }

    private static let standardErrorLock = Mutex(())
    private static let standardError: @Sendable (String) -> Void = { line in
        standardErrorLock.withLock { _ in
            var bytes = Array(line.utf8)
            bytes.append(0x0A)
            _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        }
    }

    public func debug(_ message: @autoclosure () -> String, _ metadata: KeyValuePairs<String, String> = [:]) {
        log(.debug, message(), metadata)
    }
    public func info(_ message: @autoclosure () -> String, _ metadata: KeyValuePairs<String, String> = [:]) {
        log(.info, message(), metadata)
    }
    public func warning(_ message: @autoclosure () -> String, _ metadata: KeyValuePairs<String, String> = [:]) {
        log(.warning, message(), metadata)
    }
    public func error(_ message: @autoclosure () -> String, _ metadata: KeyValuePairs<String, String> = [:]) {
        log(.error, message(), metadata)
    }

    public func log(_ level: Level, _ message: @autoclosure () -> String, _ metadata: KeyValuePairs<String, String>) {
        guard level >= self.level else { return }
        let time = Logger.timestamp()
        switch format {
        case .text:
            // One call, one line: a message or field quoting a job's spec, argv or a control entry (anyone's to
            // write) could otherwise end the line and forge the next one, or drive the terminal (`\u{a}`, `\u{1b}`).
            let text = JobEntry.escaped(message())
            var line = "\(time) \(level.name.padding(toLength: 7, withPad: " ", startingAt: 0)) [\(label)] \(text)"
            for (key, value) in metadata {
                line += " \(JobEntry.escaped(key))=\(Logger.fieldText(value))"
            }
            sink(line)
        case .json:
            let reserved = ["ts", "level", "logger", "msg"]
            var object: [String: String] = ["ts": time, "level": level.name, "logger": label, "msg": message()]
            // A field named like one of the line's own keys is kept beside it rather than replacing it.
            for (key, value) in metadata { object[reserved.contains(key) ? "field_" + key : key] = value }
            let keys = reserved + object.keys.filter { !reserved.contains($0) }.sorted()
            sink("{" + keys.map { "\(Logger.quote($0)):\(Logger.quote(object[$0]!))" }.joined(separator: ",") + "}")
        }
    }

    private static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case let c where c.value < 0x20: out += String(format: "\\u%04x", c.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// A field's value in a text line: escaped (`JobEntry.escaped`), a quote written `\u{22}` as well, and quoted
    /// when it holds a space, so that `x" job=forged` stays one value instead of ending it and passing for a field.
    static func fieldText(_ value: String) -> String {
        let value = JobEntry.escaped(value).replacingOccurrences(of: "\"", with: "\\u{22}")
        return value.contains(" ") ? "\"\(value)\"" : value
    }

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
            parts.tm_hour, parts.tm_min, parts.tm_sec, now.tv_nsec / 1_000_000)
    }
}

/// Whether a warning that a loop may hit many times a second is worth logging again: a new text, or the same one
/// once `interval` has passed since it was last logged.
struct RepeatedWarning {
    let interval: Duration
    private var last: (text: String, at: ContinuousClock.Instant)?

    init(every interval: Duration) { self.interval = interval }

    /// True (and remembered) when `text` should be logged now.
    mutating func allows(_ text: String, now: ContinuousClock.Instant = .now) -> Bool {
        if let last, last.text == text, now - last.at < interval { return false }
        last = (text, now)
        return true
    }

    /// Forgets the last warning; true when there was one (what it warned about is over: say so once).
    mutating func clear() -> Bool {
        defer { last = nil }
        return last != nil
    }
}

/// Whether a warning shared by many tasks is worth logging again: each text (or key) at most once per `interval`.
/// Remembers a bounded number of texts; a few distinct ones at most in practice.
final class ThrottledWarnings: Sendable {
    let interval: Duration
    private let logged = Mutex<[String: ContinuousClock.Instant]>([:])

    init(every interval: Duration) { self.interval = interval }

    /// True (and remembered) when `text` was not logged within `interval`.
    func allows(_ text: String, now: ContinuousClock.Instant = .now) -> Bool {
        logged.withLock { logged in
            if let last = logged[text], now - last < interval { return false }
            if logged.count >= 64 { logged = logged.filter { now - $0.value < interval } }
            logged[text] = now
            return true
        }
    }
}

/// `1 job`, `2 jobs`, `1 entry`, `3 entries`: a count with its noun, for log lines.
public func counted(_ count: Int, _ singular: String, _ plural: String) -> String {
    "\(count) \(count == 1 ? singular : plural)"
}
