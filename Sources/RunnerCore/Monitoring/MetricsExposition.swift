/// One metric family in the Prometheus text exposition format 0.0.4: its `# HELP`, `# TYPE` and samples.
public struct MetricFamily: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case counter, gauge, histogram
    }

    /// One sample line: the family name plus `suffix` (`_bucket`, `_sum`, `_count` for histograms), its labels in
    /// order, its value.
    public struct Sample: Sendable, Equatable {
        public var suffix: String
        public var labels: [Label]
        public var value: Double

        public init(suffix: String = "", labels: [Label] = [], value: Double) {
            self.suffix = suffix
            self.labels = labels
            self.value = value
        }
    }

    public struct Label: Sendable, Equatable {
        public var name: String
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public var name: String
    public var help: String
    public var kind: Kind
    public var samples: [Sample]

    public init(name: String, help: String, kind: Kind, samples: [Sample]) {
        self.name = name
        self.help = help
        self.kind = kind
        self.samples = samples
    }

    /// A family of one unlabelled sample.
    public static func single(_ name: String, _ kind: Kind, _ help: String, _ value: Double) -> MetricFamily {
        MetricFamily(name: name, help: help, kind: kind, samples: [Sample(value: value)])
    }

    /// A histogram family from per-bucket counts (not cumulative; the last count is above the last bound), their
    /// sum and total count: `_bucket` lines with cumulative counts up to `le="+Inf"`, then `_sum` and `_count`.
    public static func histogram(
        _ name: String, _ help: String, bounds: [Double], counts: [Int], sum: Double
    ) -> MetricFamily {
        var samples: [Sample] = []
        var cumulative = 0
        for (index, bound) in bounds.enumerated() {
            cumulative += index < counts.count ? counts[index] : 0
            samples.append(
                Sample(suffix: "_bucket", labels: [Label("le", formatValue(bound))], value: Double(cumulative)))
        }
        let total = counts.reduce(0, +)
        samples.append(Sample(suffix: "_bucket", labels: [Label("le", "+Inf")], value: Double(total)))
        samples.append(Sample(suffix: "_sum", value: sum))
        samples.append(Sample(suffix: "_count", value: Double(total)))
        return MetricFamily(name: name, help: help, kind: .histogram, samples: samples)
    }
}

/// Renders metric families as the Prometheus text exposition format, version 0.0.4.
public enum MetricsExposition {
    /// The `Content-Type` of the rendered text.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// `# HELP`, `# TYPE` and the sample lines of each family, in order, each line ending in `\n`.
    public static func render(_ families: [MetricFamily]) -> String {
        var text = ""
        for family in families {
            text += "# HELP \(family.name) \(escapeHelp(family.help))\n"
            text += "# TYPE \(family.name) \(family.kind.rawValue)\n"
            for sample in family.samples {
                text += family.name + sample.suffix
                if !sample.labels.isEmpty {
                    text += "{"
                    text += sample.labels.map { "\($0.name)=\"\(escapeLabelValue($0.value))\"" }.joined(separator: ",")
                    text += "}"
                }
                text += " " + formatValue(sample.value) + "\n"
            }
        }
        return text
    }

    /// HELP text: backslash and line feed escaped.
    static func escapeHelp(_ text: String) -> String {
        text.replacingAll([("\\", "\\\\"), ("\n", "\\n")])
    }

    /// A label value: backslash, double quote and line feed escaped.
    static func escapeLabelValue(_ text: String) -> String {
        text.replacingAll([("\\", "\\\\"), ("\"", "\\\""), ("\n", "\\n")])
    }
}

/// A sample value as Prometheus writes it: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
func formatValue(_ value: Double) -> String {
    if value.isNaN { return "NaN" }
    if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
    if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
    return String(value)
}

extension String {
    /// Replaces each scalar by its replacement in one pass (so an inserted backslash is not escaped again). By
    /// scalars, not characters: CR LF is one Character, which is not "\n", so its line feed went out raw.
    fileprivate func replacingAll(_ replacements: [(Unicode.Scalar, String)]) -> String {
        var result = ""
        for scalar in unicodeScalars {
            if let replacement = replacements.first(where: { $0.0 == scalar }) {
                result += replacement.1
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result
    }
}
