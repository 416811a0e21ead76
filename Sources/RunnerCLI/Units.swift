import Foundation

/// Parses durations as written on the command line: `30s`, `500ms`, `2m`, `1h`, `7d`, `1.5s`, `1h30m`, or a bare
/// number of seconds.
public enum DurationParser {
    private static let units: [(suffix: String, seconds: Double)] = [
        ("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400),
    ]

    /// The longest duration accepted, exclusive: 10 years (3650d), more than any timeout or interval needs.
    public static let limitSeconds: Double = 10 * 365 * 24 * 3600

    /// The duration written, or nil when it does not parse or is not below `limitSeconds`.
    public static func parse(_ text: String) -> Duration? {
        guard let seconds = seconds(text), seconds < limitSeconds else { return nil }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    /// Whether `text` is a well-written duration that `parse` refuses only for being 10 years or longer
    /// (`3650d`, `1e9` is not one: a bare number is digits and a point).
    public static func isTooLong(_ text: String) -> Bool {
        guard let seconds = seconds(text) else { return false }
        return seconds >= limitSeconds
    }

    /// The seconds `text` says, without the upper limit; nil when it does not parse.
    private static func seconds(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        guard !trimmed.isEmpty else { return nil }
        if trimmed.allSatisfy({ $0.isNumber || $0 == "." }) { return finite(Double(trimmed)) }
        var total = 0.0
        var rest = Substring(trimmed)
        while !rest.isEmpty {
            let number = rest.prefix { $0.isNumber || $0 == "." }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { $0.isLetter }
            rest = rest.dropFirst(unit.count)
            guard !number.isEmpty, let value = Double(number),
                let scale = units.first(where: { $0.suffix == unit })?.seconds
            else { return nil }
            total += value * scale
        }
        return finite(total)
    }

    private static func finite(_ value: Double?) -> Double? {
        guard let value, value.isFinite, value >= 0 else { return nil }
        return value
    }

    /// `duration` as `parse` reads it, in whole units, largest first (the canonical spelling): 90 s is `1m30s`,
    /// 1.5 s `1s500ms`, 2 minutes `2m`, zero `0s`. Below a millisecond is dropped (`parse` keeps none).
    public static func text(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        var rest = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        guard rest > 0 else { return "0s" }
        var text = ""
        for (suffix, milliseconds) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)]
        where rest >= Int64(milliseconds) {
            text += "\(rest / Int64(milliseconds))\(suffix)"
            rest %= Int64(milliseconds)
        }
        return text
    }
}

/// Parses sizes: `1048576`, `64K`, `64M`, `1G` (powers of 1024), optionally with a trailing `B`/`iB`.
public enum ByteSizeParser {
    /// The units, smallest first: binary multiples.
    private static let units: [(suffix: Character, factor: Int)] = [
        ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40),
    ]

    public static func parse(_ text: String) -> Int? {
        var s = text.trimmingCharacters(in: .whitespaces).uppercased()
        if s.hasSuffix("IB") { s.removeLast(2) } else if s.hasSuffix("B") { s.removeLast() }
        var factor = 1
        if let last = s.last, let f = units.first(where: { $0.suffix == last })?.factor {
            factor = f
            s.removeLast()
        }
        guard !s.isEmpty, s.allSatisfy(\.isNumber), let n = Int(s), n <= Int.max / factor else { return nil }
        return n * factor
    }

    /// `bytes` as `parse` reads it, in the largest unit that holds it exactly (1048576 is `1M`, 3072 is `3K`); a
    /// number of bytes when no unit divides it.
    public static func text(_ bytes: Int) -> String {
        for (suffix, factor) in units.reversed() where bytes != 0 && bytes % factor == 0 {
            return "\(bytes / factor)\(suffix)"
        }
        return String(bytes)
    }
}
