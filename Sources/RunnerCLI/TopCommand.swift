import Foundation
import RedisClient
import RunnerCore
import Synchronization

/// `runner top` (and `runner status --watch`): the pool, refreshed in place until q or Ctrl-C.
enum TopCommand {
    static let options = [
        OptionSpec("--interval", .value("DURATION"), help: "Time between refreshes.", default: "1s"),
        OptionSpec("--once", .flag, help: "Print one snapshot and exit."),
        OptionSpec("--events", .value("N"), help: "Recent events shown; 0 hides the events pane.", default: "10"),
    ]

    static let spec = CommandSpec(
        name: "top",
        abstract: "Watch the pool live: runners, running jobs, queues and recent events (q or Ctrl-C quits).",
        usage: "runner top [--interval 1s] [--once] [--events N]",
        options: CommonOptions.all + options,
        discussion: """
            On a terminal the view is redrawn in place every --interval; q or Ctrl-C quits and restores the terminal.
            When standard output is not a terminal, one plain snapshot is printed per interval (a blank line
            between them) until interrupted or until its reader goes away (exit 0; exit 1 when standard output was
            closed), or only one with --once. q quits with exit 0; Ctrl-C, SIGINT and SIGTERM end it
            (after the terminal is restored) by that signal, as they end 'runner events --follow': the shell sees
            130 (143 for SIGTERM). While Redis cannot be read the view is one 'reconnecting' line, tried again
            every --interval. LEASE is the time the runner's lease has
            left now; SLOTS, CPU and MEMORY are as of its last heartbeat and resource sample; LAG counts entries not
            yet delivered to any runner. Also 'runner status --watch'.
            """)

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let interval = try arguments.duration("--interval", atLeast: .milliseconds(100)) ?? .seconds(1)
        let eventCount =
            try arguments.parsed("--events", expected: "expected a whole number, 0 for no events pane") {
                Int($0).flatMap { $0 >= 0 ? $0 : nil }
            } ?? 10
        func render(_ snapshot: PoolSnapshot, width: Int) -> [String] {
            TopView.render(snapshot, width: width, showsEvents: eventCount > 0)
        }
        let pool = try await connectedPool(arguments, console: console)
        defer { pool.client.close() }
        if arguments.flag("--once") {
            let snapshot = try await pool.snapshot(eventCount: eventCount)
            for line in render(snapshot, width: 0) { console.print(line) }
            return 0
        }
        let terminal = console.isTerminal ? TerminalSession.begin() : nil
        let loop = Task {
            var first = true
            while !Task.isCancelled {
                let lines: [String]
                do {
                    lines = render(try await pool.snapshot(eventCount: eventCount), width: terminal?.width ?? 0)
                } catch is CancellationError {
                    return
                } catch let error as RedisClientError {
                    // Not fatal: it is tried again every interval. Worded as `events --follow` words a lost
                    // connection, without the `Error:` that marks the end of a command.
                    lines = ["runner: \(error.message); reconnecting (every \(interval))"]
                } catch {
                    lines = ["runner: cannot read the pool: \(error); retrying every \(interval)"]
                }
                if let terminal {
                    terminal.draw(lines)
                } else {
                    if !first { console.print("") }
                    for line in lines { console.print(line) }
                }
                first = false
                // Nobody reads any more (`| head -1`, or stdout closed): stop instead of drawing for nobody.
                if console.outputGone() != nil { return }
                try? await Task.sleep(for: interval)
            }
        }
        let quit: @Sendable () -> Void = { loop.cancel() }
        let interrupted = Mutex<Int32?>(nil)
        let signals = SignalObserver(signals: [SIGINT, SIGTERM]) { number in
            interrupted.withLock { $0 = $0 ?? number }
            quit()
        }
        let keys = terminal != nil && isatty(0) == 1 ? KeyReader.start(onQuit: quit) : nil
        await loop.value
        keys?.stop()
        signals.cancel()
        terminal?.end()
        if let status = try OutputGone.exitStatus(console) { return status }
        if let number = interrupted.withLock({ $0 }) { return endBySignal(number) }
        return 0
    }

    /// Ends the process by `number` once the terminal is restored, as the live commands without a handler of
    /// their own (`events --follow`, `logs --follow`, `submit --wait`) end: the shell sees 130 for SIGINT, 143
    /// for SIGTERM. Returns 128 + `number` should the signal not end it.
    static func endBySignal(_ number: Int32) -> Int32 {
        signal(number, SIG_DFL)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, number)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        raise(number)
        return 128 + number
    }
}

/// The terminal while `runner top` draws on it: no echo, no line buffering (so one key press is read at once),
/// the alternate screen, cursor hidden. `end()` restores what was there.
final class TerminalSession: Sendable {
    /// The input mode to restore; nil when standard input is no terminal (nothing was changed).
    private let saved: termios?

    private init(saved: termios?) { self.saved = saved }

    /// Switches the terminal on standard input (when it is one) to key-at-a-time input, and standard output to
    /// the alternate screen. Ctrl-C still raises SIGINT (ISIG stays on), which `runner top` handles.
    static func begin() -> TerminalSession {
        var original = termios()
        let haveTerminalInput = isatty(0) == 1 && tcgetattr(0, &original) == 0
        if haveTerminalInput {
            var raw = original
            raw.c_lflag &= ~tcflag_t(ICANON | ECHO)
            withUnsafeMutableBytes(of: &raw.c_cc) { cc in
                cc[Int(VMIN)] = 1
                cc[Int(VTIME)] = 0
            }
            tcsetattr(0, TCSANOW, &raw)
        }
        write("\u{1B}[?1049h\u{1B}[?25l")
        return TerminalSession(saved: haveTerminalInput ? original : nil)
    }

    /// The terminal's width in columns (TIOCGWINSZ), 80 when it cannot tell.
    var width: Int {
        var size = winsize()
        return ioctl(1, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 0 ? Int(size.ws_col) : 80
    }

    var height: Int {
        var size = winsize()
        return ioctl(1, UInt(TIOCGWINSZ), &size) == 0 && size.ws_row > 0 ? Int(size.ws_row) : 24
    }

    /// Redraws in place: cursor home, each line with the rest of its row cleared, then the rest of the screen.
    func draw(_ lines: [String]) {
        let shown = lines.prefix(max(1, height - 1))
        write("\u{1B}[H" + shown.map { $0 + "\u{1B}[K\n" }.joined() + "\u{1B}[J")
    }

    /// Restores the input mode, the cursor and the main screen.
    func end() {
        write("\u{1B}[?25h\u{1B}[?1049l")
        if var original = saved { tcsetattr(0, TCSANOW, &original) }
    }

    private static func write(_ text: String) { Console.standard.out(Array(text.utf8)) }
    private func write(_ text: String) { Self.write(text) }
}

/// Reads keys from standard input on a thread of its own (a blocking read never runs on the cooperative pool),
/// calling `onQuit` for q, Q or Ctrl-C (0x03, in case ISIG is off), or when input ends.
final class KeyReader: Sendable {
    private let stopped = Mutex(false)

    static func start(onQuit: @escaping @Sendable () -> Void) -> KeyReader {
        let reader = KeyReader()
        let thread = Thread { reader.readKeys(onQuit) }
        thread.name = "runner-top-keys"
        thread.start()
        return reader
    }

    func stop() { stopped.withLock { $0 = true } }

    /// poll(2) with a short timeout, so that `stop()` is seen without closing standard input.
    private func readKeys(_ onQuit: @Sendable () -> Void) {
        var byte: UInt8 = 0
        while !stopped.withLock({ $0 }) {
            var fds = [pollfd(fd: 0, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 1, 200) > 0 else { continue }
            let count = read(0, &byte, 1)
            if count == 0 || (count < 0 && errno != EINTR && errno != EAGAIN) {
                onQuit()
                return
            }
            if count == 1, byte == UInt8(ascii: "q") || byte == UInt8(ascii: "Q") || byte == 0x03 {
                onQuit()
                return
            }
        }
    }
}
