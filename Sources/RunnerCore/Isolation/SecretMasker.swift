import ProcessSupervision
import RunnerProtocol

/// Replaces the values of a job's secret variables in its output with `***`, also when a value is split across
/// chunks: the end of a chunk that could be the start of a secret is held back until the next chunk shows
/// whether it is one.
///
/// Secret are the variables named in the spec's `secret_env` and every variable whose name ends in `_TOKEN`,
/// `_SECRET` or `_PASSWORD`. Values shorter than `minimumLength` bytes are not masked: masking every "1" or "on" in
/// the output would garble it without hiding anything.
struct SecretMasker: Sendable {
    static let mask: [UInt8] = Array(SecretVariables.mask.utf8)
    static let minimumLength = 4

    /// Longest first, so that a secret containing another is masked whole.
    private let secrets: [[UInt8]]
    private var heldBack: [OutputStream: [UInt8]] = [:]

    /// `alsoMasked`: further values to hide whatever their variable (the runner's Redis password).
    init(environment: [String: String], secretNames: [String], alsoMasked: [String] = []) {
        var values = Set<[UInt8]>()
        let secretValues =
            environment.filter { SecretVariables.isSecret($0.key, named: secretNames) }.map(\.value) + alsoMasked
        for value in secretValues {
            let bytes = Array(value.utf8)
            if bytes.count >= SecretMasker.minimumLength { values.insert(bytes) }
        }
        secrets = values.sorted { $0.count > $1.count }
    }

    /// Whether there is anything to mask.
    var isActive: Bool { !secrets.isEmpty }

    /// The masked bytes of `bytes` that can be released now.
    mutating func mask(_ stream: OutputStream, _ bytes: [UInt8]) -> [UInt8] {
        guard isActive else { return bytes }
        let text = (heldBack[stream] ?? []) + bytes
        let (masked, consumed) = replaceSecrets(in: text)
        let hold = heldSuffixLength(of: text, from: consumed)
        heldBack[stream] = Array(text[(text.count - hold)...])
        return masked + text[consumed..<(text.count - hold)]
    }

    /// What is still held back for `stream`, at the end of the output (a secret's prefix is not a secret).
    mutating func flush(_ stream: OutputStream) -> [UInt8] {
        defer { heldBack[stream] = nil }
        return heldBack[stream] ?? []
    }

    /// Masks every whole secret; returns the output up to the end of the last match and where it ends in `text`.
    private func replaceSecrets(in text: [UInt8]) -> (masked: [UInt8], consumed: Int) {
        var out: [UInt8] = []
        var copiedUpTo = 0
        var index = 0
        while index < text.count {
            if let secret = secrets.first(where: { SecretMasker.matches($0, in: text, at: index) }) {
                out.append(contentsOf: text[copiedUpTo..<index])
                out.append(contentsOf: SecretMasker.mask)
                index += secret.count
                copiedUpTo = index
            } else {
                index += 1
            }
        }
        return (out, copiedUpTo)
    }

    /// The length of the longest end of `text` (after `start`) that is a proper prefix of some secret.
    private func heldSuffixLength(of text: [UInt8], from start: Int) -> Int {
        let available = text.count - start
        let longest = min(available, (secrets.first?.count ?? 1) - 1)
        guard longest > 0 else { return 0 }
        for length in stride(from: longest, through: 1, by: -1) {
            let suffix = text[(text.count - length)...]
            if secrets.contains(where: { $0.count > length && $0.starts(with: suffix) }) { return length }
        }
        return 0
    }

    private static func matches(_ secret: [UInt8], in text: [UInt8], at index: Int) -> Bool {
        guard text.count - index >= secret.count else { return false }
        return text[index..<(index + secret.count)].elementsEqual(secret)
    }
}
