import ProcessSupervision
import RedisClient
import RunnerProtocol
import Synchronization

/// Collects a job's stdout and stderr into its log stream `{nr}:log:<id>` and keeps the output tail.
///
/// Chunks arrive on the process monitor thread and are only buffered there; a flusher task writes them in
/// batches, each one fenced script (the attempt must still be this runner's epoch's). What goes past the log limit
/// is counted, not stored, and a `meta` entry marks the cut. Entry ids are chosen by the recorder
/// (`<base ms>-<seq>`), so a write resent after a lost reply is refused by Redis as a duplicate instead of being
/// stored twice.
final class OutputRecorder: Sendable {
    struct Summary: Sendable {
        var tail: [UInt8]
        var storedBytes: Int
        var droppedBytes: Int
    }

    private enum Chunk {
        case output(OutputStream, [UInt8])
        /// The runner's own marker (truncation), stored with `fd` = `meta`.
        case meta(String)
    }

    private struct State {
        var pending: [Chunk] = []
        var pendingBytes = 0
        var storedBytes = 0
        var droppedBytes = 0
        var truncationMarked = false
        var tail: [UInt8] = []
        var masker: SecretMasker

        /// Counts and buffers one (masked) chunk, keeping the tail and the log limit.
        mutating func record(_ stream: OutputStream, _ bytes: [UInt8], limit: Int, tailLimit: Int) {
            guard !bytes.isEmpty else { return }
            tail.append(contentsOf: bytes)
            if tail.count > 2 * tailLimit { tail.removeFirst(tail.count - tailLimit) }
            let room = limit - storedBytes
            if room >= bytes.count {
                pending.append(.output(stream, bytes))
                storedBytes += bytes.count
                pendingBytes += bytes.count
            } else {
                if room > 0 {
                    pending.append(.output(stream, Array(bytes[..<room])))
                    storedBytes += room
                    pendingBytes += room
                }
                droppedBytes += bytes.count - max(room, 0)
                if !truncationMarked {
                    truncationMarked = true
                    pending.append(.meta("output truncated: the log limit of \(limit) bytes was reached"))
                }
            }
        }
    }

    private let client: RedisClient
    private let store: JobStore
    private let logger: Logger
    private let key: String
    private let entry: JobEntry
    private let owner: AttemptOwner
    /// Set once a batch was refused: the attempt is no longer this epoch's, later output is dropped.
    private let refused = Mutex(false)
    /// Set once the log key was found of another type: said once per job, later batches are still tried (the key may
    /// be fixed meanwhile).
    private let wrongTypeReported = Mutex(false)
    /// The log stream's last entry leaves no later id for this recorder's (written there by hand): nothing of the
    /// output can be added, and the job's log says so once.
    private let noIdLeft = Mutex(false)
    private let limit: Int
    private let tailLimit: Int
    private let state: Mutex<State>
    private let signals: AsyncStream<Void>
    private let signal: AsyncStream<Void>.Continuation
    private let sequence = Mutex<(base: Int?, next: Int)>((nil, 1))
    /// Fired when the process has ended, so the flusher stops gathering and writes at once.
    private let finishing = Latch()
    /// The task that writes output while the job runs, started by the first chunk or note: most short jobs write
    /// nothing and need no task.
    private let flusher = Mutex<Task<Void, Never>?>(nil)

    private static let entryLimit = 512 << 10
    private static let flushThreshold = 256 << 10

    init(
        client: RedisClient, store: JobStore, logger: Logger, entry: JobEntry, owner: AttemptOwner, limit: Int,
        tailLimit: Int, masker: SecretMasker = SecretMasker(environment: [:], secretNames: [])
    ) {
        self.state = Mutex(State(masker: masker))
        self.client = client
        self.store = store
        self.logger = logger
        self.key = store.keyspace.log(job: entry.jobId)
        self.entry = entry
        self.owner = owner
        self.limit = limit
        self.tailLimit = tailLimit
        (signals, signal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Called from the monitor thread for each chunk: buffer, count, keep the tail, wake the flusher.
    func append(_ stream: OutputStream, _ bytes: [UInt8]) {
        state.withLock { state in
            let bytes = state.masker.mask(stream, bytes)
            state.record(stream, bytes, limit: limit, tailLimit: tailLimit)
        }
        startFlusher()
        signal.yield()
    }

    /// Adds a marker of the runner's own (fd `meta`) at this point of the output.
    func note(_ text: String) {
        state.withLock { $0.pending.append(.meta(text)) }
        startFlusher()
        signal.yield()
    }

    private func startFlusher() {
        flusher.withLock { task in
            if task == nil { task = Task { await self.run() } }
        }
    }

    /// Writes buffered output until `finish()`; runs as the flusher task.
    private func run() async {
        for await _ in signals {
            await flush()
            if state.withLock({ $0.pendingBytes }) < OutputRecorder.flushThreshold {
                // Let small writes gather into one round trip; bounded, only while output flows, and cut short
                // when the job has ended so its result is not held back.
                _ = await wait(for: finishing, timeout: .milliseconds(20))
            }
        }
        await flush()
    }

    /// Stops the flusher after a last write and returns the tail and counts. Call it after the process ended (all
    /// its output appended).
    func finish() async -> Summary {
        state.withLock { state in
            for stream in [OutputStream.stdout, .stderr] {
                state.record(stream, state.masker.flush(stream), limit: limit, tailLimit: tailLimit)
            }
        }
        finishing.fire()
        signal.finish()
        if let flusher = flusher.withLock({ $0 }) {
            await flusher.value
        } else {
            await flush()  // what the masker held back, if anything
        }
        let dropped = state.withLock { $0.droppedBytes }
        if dropped > 0 {
            let note = "\(dropped) bytes of output were dropped after the log limit of \(limit) bytes"
            state.withLock { $0.pending.append(.meta(note)) }
            await flush()
        }
        return state.withLock { state in
            Summary(
                tail: Array(state.tail.suffix(tailLimit)), storedBytes: state.storedBytes,
                droppedBytes: state.droppedBytes)
        }
    }

    private func takePending() -> [(String, [UInt8])] {
        let chunks = state.withLock { state -> [Chunk] in
            defer {
                state.pending.removeAll(keepingCapacity: true)
                state.pendingBytes = 0
            }
            return state.pending
        }
        var entries: [(String, [UInt8])] = []
        for chunk in chunks {
            guard case .output(let stream, let bytes) = chunk else {
                if case .meta(let note) = chunk { entries.append((LogField.meta, Array(note.utf8))) }
                continue
            }
            let name = stream == .stdout ? LogField.stdout : LogField.stderr
            if let last = entries.last, last.0 == name, last.1.count + bytes.count <= OutputRecorder.entryLimit {
                entries[entries.count - 1].1.append(contentsOf: bytes)
            } else {
                entries.append((name, bytes))
            }
        }
        return entries
    }

    /// Batches stay well below Redis's limits on a script's arguments.
    private static let batchBytes = 4 << 20

    private func flush() async {
        let entries = takePending()
        guard !entries.isEmpty, !refused.withLock({ $0 }), !noIdLeft.withLock({ $0 }) else { return }
        guard let base = await entryBase() else { return }
        let numbered = sequence.withLock { seq -> [(id: String, fd: String, data: [UInt8])] in
            entries.map { entry in
                defer { seq.next += 1 }
                return ("\(base)-\(seq.next)", entry.0, entry.1)
            }
        }
        var batches: [[(id: String, fd: String, data: [UInt8])]] = [[]]
        var size = 0
        for item in numbered {
            if size + item.data.count > OutputRecorder.batchBytes, !batches[batches.count - 1].isEmpty {
                batches.append([])
                size = 0
            }
            batches[batches.count - 1].append(item)
            size += item.data.count
        }
        for batch in batches {
            // Idempotent thanks to explicit ids: a resent entry is refused as "equal or smaller", which is success.
            let accepted = await DurableWrite.perform(logger: logger) { [store, entry, owner] in
                try await store.appendLog(
                    jobId: entry.jobId, streamId: entry.streamId, owner: owner, entries: batch,
                    retry: .idempotent(deadline: nil))
            }
            switch accepted {
            case .refused?:
                refused.withLock { $0 = true }
                logger.info("output no longer recorded: the attempt is not this lease epoch's", ["job": entry.jobId])
                return
            case .wrongType(let type)?: reportWrongType(type)
            case .accepted?, nil: break
            }
        }
    }

    /// One warning per job: its log key holds another type, so its output is not recorded (its result's tail is).
    private func reportWrongType(_ type: String) {
        guard
            !wrongTypeReported.withLock({ reported in
                defer { reported = true }; return reported
            })
        else { return }
        let wrong = WrongTypeKey(key: key, type: type, expected: "stream")
        logger.warning(
            "the job's output is not recorded: \(wrong.text); its result keeps the output's tail",
            ["job": entry.jobId])
    }

    /// The millisecond part of this recorder's entry ids: later than anything already in the stream.
    private func entryBase() async -> Int? {
        if let base = sequence.withLock({ $0.base }) { return base }
        var base = WallClock.milliseconds()
        let last = await DurableWrite.perform(logger: logger) { [client, key] in
            do {
                return try await client.send(
                    RedisCommand(["XREVRANGE", key, "+", "-", "COUNT", "1"]), retry: .idempotent(deadline: nil))
            } catch let error as RedisServerError where error.kind == "WRONGTYPE" {
                return RedisReply.error(error.message)  // the key holds another type: named below
            }
        }
        if case .error? = last {
            let type = try? await client.send(RedisCommand(["TYPE", key])).string
            reportWrongType(type ?? "?")
        }
        if let reply = last, let lastId = reply.array?.first?.array?.first?.string {
            // Redis's ids go up to 2^64 - 1 ms; this recorder's must stay above the last and within an Int. An id
            // planted at the end of that space leaves none: every XADD would be refused as "equal or smaller",
            // which a resent batch also gets, so it would pass for success and the output vanish without a word.
            guard let ms = lastId.split(separator: "-").first.flatMap({ UInt64($0) }), ms < UInt64(Int.max) else {
                noIdLeft.withLock { $0 = true }
                logger.warning(
                    "the job's output is not recorded: key \(key) ends with entry \(lastId), after which no entry id "
                        + "is left; its result keeps the output's tail", ["job": entry.jobId])
                return nil
            }
            base = max(base, Int(ms) + 1)
        }
        sequence.withLock { $0.base = base }
        return base
    }
}
