import Foundation
import Synchronization

/// Where a command writes: standard output and error as byte sinks, so tests can capture them.
public struct Console: Sendable {
    public var out: @Sendable ([UInt8]) -> Void
    public var err: @Sendable ([UInt8]) -> Void
    /// Whether standard output is a terminal.
    public var isTerminal: Bool

    public init(
        out: @escaping @Sendable ([UInt8]) -> Void, err: @escaping @Sendable ([UInt8]) -> Void, isTerminal: Bool = false
    ) {
        self.out = out
        self.err = err
        self.isTerminal = isTerminal
    }

    /// The process's own standard output and error.
    public static let standard = Console(
        out: { Console.writeAll(1, $0) }, err: { Console.writeAll(2, $0) }, isTerminal: isatty(1) == 1)

    public func print(_ line: String) { out(Array((line + "\n").utf8)) }
    public func error(_ line: String) { err(Array((line + "\n").utf8)) }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += n
            }
        }
    }
}

/// Collects output in memory (for tests and for `--json` assembly).
public final class CapturedOutput: Sendable {
    private let buffers = Mutex<(out: [UInt8], err: [UInt8])>(([], []))
    public init() {}
    public var console: Console {
        Console(
            out: { bytes in self.buffers.withLock { $0.out += bytes } },
            err: { bytes in self.buffers.withLock { $0.err += bytes } })
    }
    public var standardOutput: String { String(decoding: buffers.withLock { $0.out }, as: UTF8.self) }
    public var standardError: String { String(decoding: buffers.withLock { $0.err }, as: UTF8.self) }
}
