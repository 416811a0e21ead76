import Foundation

/// Parses durations as written on the command line: `30s`, `500ms`, `2m`, `1h`, `1.5s`, or a bare number of seconds.
public enum DurationParser {
    public static func parse(_ text: String) -> Duration? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        var number = trimmed
        var scale = 1.0
        for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
            let candidate = String(trimmed.dropLast(suffix.count))
            if Double(candidate) != nil {
                number = candidate
                scale = factor
                break
            }
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isNumber || $0 == "." }), let value = Double(number),
            value.isFinite, value >= 0, value * scale < 10 * 365 * 24 * 3600
        else { return nil }
        return .milliseconds(Int64((value * scale * 1000).rounded()))
    }
}

/// Parses sizes: `1048576`, `64K`, `64M`, `1G` (powers of 1024), optionally with a trailing `B`/`iB`.
public enum ByteSizeParser {
    public static func parse(_ text: String) -> Int? {
        var s = text.trimmingCharacters(in: .whitespaces).uppercased()
        if s.hasSuffix("IB") { s.removeLast(2) } else if s.hasSuffix("B") { s.removeLast() }
        let factors: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var factor = 1
        if let last = s.last, let f = factors[last] {
            factor = f
            s.removeLast()
        }
        guard !s.isEmpty, s.allSatisfy(\.isNumber), let n = Int(s), n <= Int.max / factor else { return nil }
        return n * factor
    }
}
