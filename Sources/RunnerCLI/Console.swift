import Foundation
import Synchronization

/// Where a command writes: standard output and error as byte sinks, so tests can capture them.
public struct Console: Sendable {
    public var out: @Sendable ([UInt8]) -> Void
    public var err: @Sendable ([UInt8]) -> Void
    /// Whether standard output is a terminal.
    public var isTerminal: Bool
    /// The errno of the first write to standard output that failed (EPIPE: its reader went away; EBADF: it was
    /// closed; ENOSPC, EIO, ...), nil while writes succeed. Streaming commands check it and end (`OutputGone`);
    /// every command fails when it was anything but EPIPE.
    public var outputGone: @Sendable () -> Int32?
    /// Whether standard output's reader has gone without a write having found out yet (a pipe whose read end is
    /// closed), for a command that may go a while without writing.
    public var readerLeft: @Sendable () -> Bool

    public init(
        out: @escaping @Sendable ([UInt8]) -> Void, err: @escaping @Sendable ([UInt8]) -> Void,
        isTerminal: Bool = false,
        outputGone: @escaping @Sendable () -> Int32? = { nil },
        readerLeft: @escaping @Sendable () -> Bool = { false }
    ) {
        self.out = out
        self.err = err
        self.isTerminal = isTerminal
        self.outputGone = outputGone
        self.readerLeft = readerLeft
    }

    /// The process's own standard output and error.
    public static let standard = Console(
        out: { Console.writeAll(1, $0) }, err: { Console.writeAll(2, $0) }, isTerminal: isatty(1) == 1,
        outputGone: { Console.standardOutputGone.load(ordering: .relaxed).nonZero },
        readerLeft: {
            // The write end of a pipe reports POLLERR once its read end is closed.
            var state = pollfd(fd: 1, events: Int16(POLLOUT), revents: 0)
            return poll(&state, 1, 0) > 0 && state.revents & Int16(POLLERR | POLLHUP) != 0
        })

    /// Run first: a standard descriptor the process was started without (`>&-`) is opened on /dev/null, so that
    /// no socket or file opened later takes its number and receives output meant for it; a missing standard output
    /// is recorded as gone (EBADF), so streaming commands end instead of writing to nothing.
    public static func reserveMissingStandardDescriptors() {
        for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) == -1 && errno == EBADF {
            let null = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY)
            if null >= 0, null != fd {
                dup2(null, fd)
                close(null)
            }
            if fd == 1 { standardOutputGone.store(EBADF, ordering: .relaxed) }
        }
    }

    /// Set once by the first write to fd 1 that fails (SIGPIPE is ignored, so a closed pipe shows as EPIPE here
    /// instead of killing the process).
    private static let standardOutputGone = Atomic<Int32>(0)

    public func print(_ line: String) { out(Array((line + "\n").utf8)) }
    public func error(_ line: String) { err(Array((line + "\n").utf8)) }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 {
                    let code = errno
                    if code == EINTR { continue }
                    if code == EAGAIN {
                        // A descriptor inherited non-blocking: wait until it takes more.
                        var ready = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                        if poll(&ready, 1, -1) >= 0 { continue }
                    }
                    // Any failure (a reader gone, a closed descriptor, a full disk) means the output was not seen.
                    if fd == 1 {
                        _ = standardOutputGone.compareExchange(expected: 0, desired: code, ordering: .relaxed)
                    }
                    return
                }
                offset += n
            }
        }
    }
}

extension Int32 {
    fileprivate var nonZero: Int32? { self == 0 ? nil : self }
}

/// How a streaming command (`top`, `status --watch`, `events --follow`) ends once standard output is gone: a reader
/// that went away (`| head -1`, EPIPE) is the normal end of a pipeline, exit 0; a closed standard output (`>&-`,
/// EBADF) means the output was never seen, so it fails with one line on standard error, exit 1.
enum OutputGone {
    /// nil while standard output is writable; 0 when its reader went away; throws when it was closed.
    static func exitStatus(_ console: Console) throws -> Int32? {
        guard let code = console.outputGone() else { return nil }
        guard code == EPIPE else {
            throw CommandFailure("cannot write to standard output: \(String(cString: strerror(code)))")
        }
        return 0
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
