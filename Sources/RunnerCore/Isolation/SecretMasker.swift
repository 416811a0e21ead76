import ProcessSupervision
import RunnerProtocol

/// Replaces the values of a job's secret variables in its output with `***`, also when a value is split across
/// chunks: the end of a chunk that could be the start of a secret is held back until the next chunk shows
/// whether it is one.
///
/// Secret are the variables named in the spec's `secret_env` and every variable whose name ends in `_TOKEN`,
/// `_SECRET` or `_PASSWORD`. Values shorter than `minimumLength` bytes are not masked: masking every "1" or "on" in
/// the output would garble it without hiding anything.
///
/// At each position the longest secret that starts there is masked, and the scan goes on after it. The work is
/// linear in the output whatever the secrets (two Aho–Corasick automata, `SecretAutomaton`): a job with thousands
/// of secrets that floods its output with their common prefix must not hold the runner's threads for long.
struct SecretMasker: Sendable {
    static let mask: [UInt8] = Array(SecretVariables.mask.utf8)
    static let minimumLength = SecretVariables.minimumMaskedBytes

    /// The secrets as they are: the suffixes of the output that may begin one.
    private let forward: SecretAutomaton
    /// The secrets reversed, run over the output backwards: the longest secret that starts at each position.
    private let backward: SecretAutomaton
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
        forward = SecretAutomaton(values)
        backward = SecretAutomaton(values.map { Array($0.reversed()) })
    }

    /// Whether there is anything to mask.
    var isActive: Bool { !forward.isEmpty }

    /// The masked bytes of `bytes` that can be released now. What is released does not depend on how the output
    /// was cut into chunks: a match is masked only once no longer secret can start at or before it with bytes still
    /// to come, and the bytes from the first place where one can are held back.
    mutating func mask(_ stream: OutputStream, _ bytes: [UInt8]) -> [UInt8] {
        guard isActive else { return bytes }
        let text = (heldBack[stream] ?? []) + bytes
        let open = openStarts(of: text)
        let (masked, consumed) = replaceSecrets(in: text, open: open)
        let holdFrom = open.first { $0 >= consumed } ?? text.count
        heldBack[stream] = Array(text[holdFrom...])
        return masked + text[consumed..<holdFrom]
    }

    /// What is still held back for `stream`, at the end of the output, masked now that no more bytes can come (a
    /// secret's prefix is not a secret).
    mutating func flush(_ stream: OutputStream) -> [UInt8] {
        defer { heldBack[stream] = nil }
        guard let held = heldBack[stream], !held.isEmpty else { return [] }
        let (masked, consumed) = replaceSecrets(in: held, open: [])
        return masked + held[consumed...]
    }

    /// Masks the whole secrets of `text` from its start, up to the first of the `open` positions (ascending) at or
    /// before a match; returns the output up to the end of the last match masked and where it ends in `text`.
    private func replaceSecrets(in text: [UInt8], open: [Int]) -> (masked: [UInt8], consumed: Int) {
        // Where a secret starts, with the longest one that starts there, last position first.
        let starts = backward.matchStarts(inReversed: text)
        var out: [UInt8] = []
        var copiedUpTo = 0
        var pending = open[...]
        for (index, length) in starts.reversed() where index >= copiedUpTo {
            while let first = pending.first, first < copiedUpTo { pending = pending.dropFirst() }
            if let first = pending.first, first <= index { break }
            out.append(contentsOf: text[copiedUpTo..<index])
            out.append(contentsOf: SecretMasker.mask)
            copiedUpTo = index + length
        }
        return (out, copiedUpTo)
    }

    /// The positions, ascending, from which the rest of `text` is a proper prefix of some secret: a secret that more
    /// bytes could complete may start there.
    private func openStarts(of text: [UInt8]) -> [Int] {
        // Only the last bytes can begin a secret not yet complete: shorter than the longest secret.
        let scanned = min(text.count, forward.longestPattern - 1)
        guard scanned > 0 else { return [] }
        var state = SecretAutomaton.root
        for byte in text[(text.count - scanned)...] { state = forward.next(state, byte) }
        return forward.properPrefixSuffixLengths(state).map { text.count - $0 }
    }
}

/// An Aho–Corasick automaton over bytes: a trie of the patterns with failure links, so that a scan of any text takes
/// time linear in the text. A state stands for the longest suffix of the bytes scanned that is a prefix of a pattern.
struct SecretAutomaton: Sendable {
    typealias State = Int32
    static let root: State = 0

    private var children: [[UInt8: State]] = [[:]]
    /// The root's transitions as a table: most bytes of most output start no secret, and stay at the root.
    private var fromRoot = [State](repeating: 0, count: 256)
    private var failure: [State] = [0]
    private var depth: [Int32] = [0]
    /// The longest pattern that is a suffix of the state's bytes (0 for none).
    private var longest: [Int32] = [0]
    /// The length of the longest pattern.
    private(set) var longestPattern = 0

    init(_ patterns: some Sequence<[UInt8]>) {
        for pattern in patterns where !pattern.isEmpty {
            var state = Self.root
            for byte in pattern {
                if let child = children[Int(state)][byte] {
                    state = child
                } else {
                    let child = State(children.count)
                    children.append([:])
                    failure.append(Self.root)
                    depth.append(depth[Int(state)] + 1)
                    longest.append(0)
                    children[Int(state)][byte] = child
                    state = child
                }
            }
            longest[Int(state)] = Int32(pattern.count)
            longestPattern = max(longestPattern, pattern.count)
        }
        for (byte, child) in children[0] { fromRoot[Int(byte)] = child }
        // Breadth first: a state's failure is shallower, so it is complete when the state is reached.
        var queue = Array(children[0].values)
        var head = 0
        while head < queue.count {
            let state = queue[head]
            head += 1
            for (byte, child) in children[Int(state)] {
                var fallback = failure[Int(state)]
                while fallback != Self.root, children[Int(fallback)][byte] == nil { fallback = failure[Int(fallback)] }
                let target = children[Int(fallback)][byte] ?? Self.root
                failure[Int(child)] = target == child ? Self.root : target
                longest[Int(child)] = max(longest[Int(child)], longest[Int(failure[Int(child)])])
                queue.append(child)
            }
        }
    }

    var isEmpty: Bool { children[0].isEmpty }

    /// The state after `byte`.
    func next(_ state: State, _ byte: UInt8) -> State {
        var current = state
        while current != Self.root {
            if let child = children[Int(current)][byte] { return child }
            current = failure[Int(current)]
        }
        return fromRoot[Int(byte)]
    }

    /// For an automaton of reversed patterns: scans `text` from its end, and returns each position where a pattern
    /// starts with the length of the longest one starting there, last position first. Bytes that begin no pattern
    /// are passed over at the root with one table lookup each.
    func matchStarts(inReversed text: [UInt8]) -> [(index: Int, length: Int)] {
        var starts: [(index: Int, length: Int)] = []
        text.withUnsafeBufferPointer { bytes in
            fromRoot.withUnsafeBufferPointer { rootTable in
                var state = Self.root
                var index = bytes.count - 1
                while index >= 0 {
                    if state == Self.root {
                        while index >= 0, rootTable[Int(bytes[index])] == Self.root { index -= 1 }
                        if index < 0 { break }
                    }
                    state = next(state, bytes[index])
                    let length = longest[Int(state)]
                    if length > 0 { starts.append((index, Int(length))) }
                    index -= 1
                }
            }
        }
        return starts
    }

    /// The lengths, longest first, of the suffixes of the bytes that reached `state` that are proper prefixes of a
    /// pattern (states with children).
    func properPrefixSuffixLengths(_ state: State) -> [Int] {
        var lengths: [Int] = []
        var current = state
        while current != Self.root {
            if !children[Int(current)].isEmpty { lengths.append(Int(depth[Int(current)])) }
            current = failure[Int(current)]
        }
        return lengths
    }
}
