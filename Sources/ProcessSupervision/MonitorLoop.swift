import CRunnerShims
import Glibc

/// One supervised process, as the monitor thread sees it. Confined to the monitor thread.
final class ChildRecord {
    let id: UInt64
    let pid: pid_t
    let handle: ProcessHandleState
    let output: @Sendable (OutputStream, [UInt8]) -> Void
    let startedAt: Int64
    var pidfd: Int32
    var stdoutFD: Int32
    var stderrFD: Int32
    var exitedAt: Int64?
    var exit: nr_exit_info?
    var machine = TeardownStateMachine()
    var tree: JobTree
    /// `SubreaperChildren` showed that nothing but the main process is left of the job (after it exited): nothing of
    /// it can start again, so the teardown needs no further look and no orphan sweep.
    var provenGone = false
    /// F_SETPIPE_SZ was asked for on the stdout / stderr pipe.
    var enlargedStdout = false
    var enlargedStderr = false
    /// Told of the process's group id; nil once told it ends.
    var groups: (any ProcessGroupRegistry)?

    init(
        id: UInt64,
        pid: pid_t,
        pidfd: Int32,
        stdoutFD: Int32,
        stderrFD: Int32,
        handle: ProcessHandleState,
        output: @escaping @Sendable (OutputStream, [UInt8]) -> Void,
        startedAt: Int64,
        treeMarker: EnvironmentMarker?
    ) {
        self.id = id
        self.pid = pid
        self.pidfd = pidfd
        self.stdoutFD = stdoutFD
        self.stderrFD = stderrFD
        self.handle = handle
        self.output = output
        self.startedAt = startedAt
        self.tree = JobTree(mainPID: pid, group: handle.ownsGroup ? pid : nil, marker: treeMarker)
    }

    var pipesOpen: Bool { stdoutFD >= 0 || stderrFD >= 0 }
}

/// The monitor thread: one epoll over the pidfds and the non-blocking pipe read ends, plus the eventfd that wakes it.
/// It starts processes, reads their output, drives each `TeardownStateMachine` and reaps, so nothing ever blocks a
/// caller's thread. Confined to its thread: created and run there.
final class MonitorLoop {
    /// Read size: 64 KiB per read, a few reads per readiness so one busy pipe cannot starve the others.
    static let chunkSize = 64 * 1024
    static let readsPerEvent = 4
    /// Pipe capacity asked for with F_SETPIPE_SZ once a read finds a pipe full (a read of a whole chunk, the default
    /// capacity): fewer wake-ups for chatty jobs, and no system call for the others.
    static let pipeSize: Int32 = 256 * 1024
    /// How often reparented orphans are looked for.
    static let sweepInterval: Int64 = 200_000_000
    /// With nothing to watch for a while the loop wakes rarely: an idle runner should cost no CPU. Orphans of
    /// finished jobs mostly die soon after them, so sweeps stay fast for `recentActivityWindow` after a job.
    static let idleSweepInterval: Int64 = 10_000_000_000
    static let recentActivityWindow: Int64 = 30_000_000_000

    enum TokenKind: UInt64 {
        case wake = 0, pidfd = 1, stdout = 2, stderr = 3
    }

    private let shared: MonitorShared
    private let sweepsOrphans: Bool
    /// The sweep reaps zombies in the runner's own session too (`reapsOwnSessionOrphans`).
    private let sweepsOwnSession: Bool
    private var records: [UInt64: ChildRecord] = [:]
    /// The fast proof that a job left nothing (as a subreaper only); opened on the monitor thread.
    private var children: SubreaperChildren?
    private var nextID: UInt64 = 1
    private var nextSweep: Int64 = 0
    /// When a process was last spawned or reaped.
    private var lastActivity: Int64 = 0
    private let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MonitorLoop.chunkSize, alignment: 16)

    init(shared: MonitorShared, sweepsOrphans: Bool, sweepsOwnSession: Bool) {
        self.shared = shared
        self.sweepsOrphans = sweepsOrphans
        self.sweepsOwnSession = sweepsOwnSession
    }

    deinit {
        readBuffer.deallocate()
    }

    func run() {
        System.nameCurrentThread("nr-supervisor")
        System.acceptChildSignalsOnCurrentThread()
        if sweepsOrphans {
            children = SubreaperChildren()
        }
        var tokens = [UInt64](repeating: 0, count: 64)
        while true {
            let timeout = timeoutMilliseconds(now: System.monotonicNanoseconds())
            let ready = tokens.withUnsafeMutableBufferPointer {
                System.epollWait(shared.epollFD, tokens: $0, timeoutMilliseconds: timeout)
            }
            for index in 0..<ready {
                dispatch(token: tokens[index])
            }
            let (commands, closed) = shared.takeCommands()
            for command in commands {
                handle(command)
            }
            if closed {
                shutDownEverything()
                break
            }
            let now = System.monotonicNanoseconds()
            fireTimers(now: now)
            if sweepsOrphans, now >= nextSweep {
                ChildRegistry.sweepOrphans(includingOwnSession: sweepsOwnSession)
                let quiet = records.isEmpty && now - lastActivity > Self.recentActivityWindow
                nextSweep = now + (quiet ? Self.idleSweepInterval : Self.sweepInterval)
            }
        }
        children = nil
        System.close(shared.epollFD)
        System.close(shared.devNullFD)
    }

    // MARK: Events

    private func timeoutMilliseconds(now: Int64) -> Int32 {
        var deadline = sweepsOrphans ? nextSweep : now + Self.idleSweepInterval
        for record in records.values {
            if let due = record.machine.nextDeadline, due < deadline {
                deadline = due
            }
        }
        let delta = deadline - now
        if delta <= 0 { return 0 }
        return Int32(min((delta + 999_999) / 1_000_000, 60_000))  // rounded up: never wake just before a deadline
    }

    private func dispatch(token: UInt64) {
        guard let kind = TokenKind(rawValue: token & 3) else { return }
        if kind == .wake {
            System.eventFDDrain(shared.wakeFD)
            return
        }
        // Ids are never reused, so a token of a process that is gone (or an fd closed earlier in this batch) is
        // simply ignored.
        guard let record = records[token >> 2] else { return }
        switch kind {
        case .wake:
            break
        case .pidfd:
            guard record.exitedAt == nil, record.pidfd >= 0 else { return }
            // The main process is a zombie now. The pidfd is watched once (EPOLLONESHOT): kept until the reap.
            let now = System.monotonicNanoseconds()
            record.exitedAt = now
            perform(record.machine.mainExited(now: now), on: record)
        case .stdout:
            readOutput(of: record, stream: .stdout)
        case .stderr:
            readOutput(of: record, stream: .stderr)
        }
    }

    private func readOutput(of record: ChildRecord, stream: OutputStream) {
        let fd = stream == .stdout ? record.stdoutFD : record.stderrFD
        guard fd >= 0 else { return }
        for _ in 0..<Self.readsPerEvent {
            let n = System.read(fd, into: readBuffer)
            if n > 0 {
                record.output(stream, Array(UnsafeRawBufferPointer(rebasing: readBuffer[0..<n])))
                if n < readBuffer.count { return }  // the pipe is empty for now
                enlargePipe(stream, of: record, fd: fd)
            } else if n == -Int(EAGAIN) {
                return
            } else {
                closeStream(stream, of: record, notify: true)  // end of file (or a read error: treat the same)
                return
            }
        }
    }

    /// A read took a whole chunk: the pipe was full, its writer may have been blocked. Asked for once per pipe.
    private func enlargePipe(_ stream: OutputStream, of record: ChildRecord, fd: Int32) {
        if stream == .stdout {
            guard !record.enlargedStdout else { return }
            record.enlargedStdout = true
        } else {
            guard !record.enlargedStderr else { return }
            record.enlargedStderr = true
        }
        System.setPipeSize(fd, Self.pipeSize)  // best effort: capped by /proc/sys/fs/pipe-max-size
    }

    private func closeStream(_ stream: OutputStream, of record: ChildRecord, notify: Bool) {
        let fd = stream == .stdout ? record.stdoutFD : record.stderrFD
        guard fd >= 0 else { return }
        System.close(fd)  // which also takes it out of the epoll set
        if stream == .stdout {
            record.stdoutFD = -1
        } else {
            record.stderrFD = -1
        }
        if notify, !record.pipesOpen {
            perform(record.machine.pipesClosed(now: System.monotonicNanoseconds()), on: record)
        }
    }

    private func fireTimers(now: Int64) {
        for record in Array(records.values) {
            if let due = record.machine.nextDeadline, due <= now {
                perform(record.machine.timerFired(now: now), on: record)
            }
        }
    }

    // MARK: Commands

    private func handle(_ command: MonitorCommand) {
        switch command {
        case .spawn(let request, let continuation):
            let handle: SpawnedHandle
            do {
                handle = try start(request)
            } catch {
                continuation.resume(throwing: error)
                return
            }
            if let policy = request.waitPolicy, let record = records[handle.id] {
                let now = System.monotonicNanoseconds()
                perform(record.machine.waitStarted(policy: policy, startedAt: record.startedAt, now: now), on: record)
            }
            continuation.resume(returning: handle)
        case .wait(let id, let policy):
            // A record that is gone has completed its handle already, which resumed the parked continuation.
            guard let record = records[id] else { return }
            let now = System.monotonicNanoseconds()
            perform(record.machine.waitStarted(policy: policy, startedAt: record.startedAt, now: now), on: record)
        case .cancel(let id):
            guard let record = records[id] else { return }
            perform(record.machine.cancel(now: System.monotonicNanoseconds()), on: record)
        case .abandon(let id):
            guard let record = records[id], !record.machine.isWaitedFor else { return }
            let now = System.monotonicNanoseconds()
            perform(record.machine.cancel(now: now), on: record)
            let immediate = TerminationPolicy(killGrace: .zero, leftoverGrace: .zero, drainLimit: .zero)
            perform(record.machine.waitStarted(policy: immediate, startedAt: record.startedAt, now: now), on: record)
        }
    }

    private func start(_ request: SpawnRequest) throws(SpawnError) -> SpawnedHandle {
        let spec = request.spec
        let prepared = try SpawnPreparation(spec)
        guard let arguments = SpawnArguments(prepared, spec: spec) else {
            throw SpawnError.setupFailed(spec, "copying the arguments", errno: ENOMEM)
        }

        let stdoutPipe: (read: Int32, write: Int32)
        let stderrPipe: (read: Int32, write: Int32)
        switch System.outputPipe() {
        case .success(let fds): stdoutPipe = fds
        case .failure(let err): throw SpawnError.setupFailed(spec, "pipe2 for stdout", errno: err.value)
        }
        switch System.outputPipe() {
        case .success(let fds): stderrPipe = fds
        case .failure(let err):
            System.close(stdoutPipe.read)
            System.close(stdoutPipe.write)
            throw SpawnError.setupFailed(spec, "pipe2 for stderr", errno: err.value)
        }

        let startedAt = System.monotonicNanoseconds()
        var config = arguments.config(stdin: shared.devNullFD, stdout: stdoutPipe.write, stderr: stderrPipe.write)
        // Registered in the same critical section as the clone: no orphan sweep can reap it unwatched.
        let result = withExtendedLifetime(arguments) {
            ChildRegistry.watched.withLock { watched in
                let result = System.spawn(&config)
                if result.pid > 0 {
                    watched.insert(result.pid)
                }
                return result
            }
        }
        System.close(stdoutPipe.write)
        System.close(stderrPipe.write)
        guard result.pid > 0 else {
            System.close(stdoutPipe.read)
            System.close(stderrPipe.read)
            throw SpawnError(
                step: result.failed_step, errno: result.failed_errno, index: result.failed_index, spec: spec)
        }

        let id = nextID
        nextID += 1
        let handle = ProcessHandleState(pid: result.pid, pidfd: result.pidfd, ownsGroup: spec.isolation.level != .none)
        let record = ChildRecord(
            id: id,
            pid: result.pid,
            pidfd: result.pidfd,
            stdoutFD: stdoutPipe.read,
            stderrFD: stderrPipe.read,
            handle: handle,
            output: request.output,
            startedAt: startedAt,
            treeMarker: spec.treeMarker
        )
        let epollErrno = [
            System.epollAdd(shared.epollFD, result.pidfd, token: id << 2 | TokenKind.pidfd.rawValue, once: true),
            System.epollAdd(shared.epollFD, stdoutPipe.read, token: id << 2 | TokenKind.stdout.rawValue),
            System.epollAdd(shared.epollFD, stderrPipe.read, token: id << 2 | TokenKind.stderr.rawValue),
        ].first { $0 != 0 }
        if let epollErrno {
            // Cannot watch it: do not let it run unsupervised.
            handle.signalJobIfUnreaped(SIGKILL)
            reapMain(record, blocking: true)
            if handle.ownsGroup { System.reapGroupZombies(record.pid) }
            closeStream(.stdout, of: record, notify: false)
            closeStream(.stderr, of: record, notify: false)
            throw SpawnError.setupFailed(spec, "epoll_ctl", errno: epollErrno)
        }
        records[id] = record
        if let groups = request.groups {
            groups.groupStarted(result.pid)
            record.groups = groups
        }
        lastActivity = System.monotonicNanoseconds()
        nextSweep = min(nextSweep, lastActivity + Self.sweepInterval)
        return SpawnedHandle(id: id, pid: result.pid, state: handle)
    }

    // MARK: Actions

    private func perform(_ actions: [TeardownStateMachine.Action], on record: ChildRecord) {
        for action in actions {
            switch action {
            case .signalJob(let signal):
                // A stopped process cannot act on SIGTERM until it runs again (as systemd does, continue it).
                signalJob(record, signal == SIGTERM ? [SIGTERM, SIGCONT] : [signal])
            case .probeJob:
                let othersAlive = probeJob(record)
                perform(
                    record.machine.jobProbed(othersAlive: othersAlive, now: System.monotonicNanoseconds()), on: record)
            case .reapMain:
                reapMain(record, blocking: true)
            case .reapJob:
                let empty = reapJob(record)
                perform(record.machine.jobChecked(empty: empty, now: System.monotonicNanoseconds()), on: record)
            case .killRemainingJob:
                if record.handle.ownsGroup { _ = System.signalGroup(record.pid, SIGKILL) }
                record.tree.signalMembersOutsideGroup(SIGKILL, in: nil)  // twice to some: no harm for SIGKILL
            case .closePipes:
                closeStream(.stdout, of: record, notify: false)
                closeStream(.stderr, of: record, notify: false)
            case .finish:
                finish(record, forcedStop: false)
            }
        }
    }

    /// The group (or the main process) and the tree members outside it. The tree is looked for first: while the main
    /// process lives its descendants are found by descent, which its death would cut.
    private func signalJob(_ record: ChildRecord, _ signals: [Int32]) {
        let table = record.tree.refresh(mainUnreaped: record.pidfd >= 0)
        for signal in signals {
            record.handle.signalJobIfUnreaped(signal)
            record.tree.signalMembersOutsideGroup(signal, in: table)
        }
    }

    /// The main process is a zombie: is anything else of the job alive? Reaps the job's zombies that are ours. The
    /// walk of /proc only when the cheap `SubreaperChildren` proof cannot show the job gone.
    private func probeJob(_ record: ChildRecord) -> Bool {
        if children?.showOnlyWatchedProcesses() == true {
            record.provenGone = true
            return false
        }
        // Unreadable /proc: assume someone is left, so the leftover grace and SIGKILL still apply. As a subreaper the
        // runner's descendants hold all of the job: this runs for every job that ends, so no scan of the whole host
        // unless the walk cannot be done.
        guard let table = (sweepsOrphans ? ProcessTable.readDescendants() : nil) ?? ProcessTable.read() else {
            return true
        }
        record.tree.refresh(table: table, mainUnreaped: true)
        record.tree.reapOwnZombies(in: table)
        let groupAlive = record.handle.ownsGroup && table.liveMembers(ofGroup: record.pid, excluding: record.pid) > 0
        return groupAlive || !record.tree.liveMembers(in: table).isEmpty
    }

    /// The main process is reaped: reaps the group's zombies, SIGKILLs tree members still there, reaps those that
    /// are ours; true when nothing of the job is left (at once when that was or can be proven cheaply).
    private func reapJob(_ record: ChildRecord) -> Bool {
        if record.provenGone || children?.showOnlyWatchedProcesses() == true {
            record.provenGone = true
            return true
        }
        var groupEmpty = true
        if record.handle.ownsGroup {
            System.reapGroupZombies(record.pid)
            groupEmpty = System.groupIsEmpty(record.pid)
        }
        guard let table = record.tree.refresh(mainUnreaped: false) else { return groupEmpty }  // nothing to look for
        record.tree.signalMembersOutsideGroup(SIGKILL, in: table)
        let reaped = record.tree.reapOwnZombies(in: table)
        return groupEmpty && record.tree.isEmpty(in: table, reaped: reaped)
    }

    /// Reaps the main process (a zombie by now) with its rusage, in one critical section with `reaped = true` and
    /// the removal from the watched set, and closes the pidfd.
    private func reapMain(_ record: ChildRecord, blocking: Bool) {
        guard record.pidfd >= 0 else { return }
        // A blocking reap is of a zombie (or of a process just sent SIGKILL): its group id leaves the registry while
        // it still names the job's group. A shutdown's non-blocking one may find it alive: told after the reap.
        if blocking { endGroup(of: record) }
        let (reaped, exit): (Bool, nr_exit_info?) = ChildRegistry.watched.withLock { watched in
            record.handle.value.withLock { value in
                let result = System.reap(pidfd: record.pidfd, block: blocking)
                if case .success(let info) = result, info.reaped == 0 {
                    return (false, nil)  // not a zombie yet (only when not blocking)
                }
                // On failure (ECHILD) something else reaped it and the status is lost; it is gone either way.
                value.reaped = true
                watched.remove(record.pid)
                return (true, try? result.get())
            }
        }
        guard reaped else { return }
        endGroup(of: record)
        record.exit = exit
        System.close(record.pidfd)  // which also takes it out of the epoll set
        record.pidfd = -1
        if sweepsOrphans {
            if !record.provenGone {
                nextSweep = 0  // a job just ended: look for its orphans soon
            }
            lastActivity = System.monotonicNanoseconds()
        }
    }

    private func endGroup(of record: ChildRecord) {
        record.groups?.groupEnding(record.pid)
        record.groups = nil
    }

    private func finish(_ record: ChildRecord, forcedStop: Bool) {
        closeStream(.stdout, of: record, notify: false)
        closeStream(.stderr, of: record, notify: false)
        records[record.id] = nil
        let machine = record.machine
        let exit = record.exit
        let termination: Termination
        switch exit.map({ Int($0.code) }) {
        case CLD_EXITED: termination = .exited(exit!.status)
        case CLD_KILLED, CLD_DUMPED: termination = .signaled(exit!.status)
        default: termination = .exited(-1)  // the status was lost (reaped by someone else)
        }
        let exitedAt = record.exitedAt ?? System.monotonicNanoseconds()
        let outcome = ProcessOutcome(
            pid: record.pid,
            termination: termination,
            stopReason: forcedStop ? (machine.stopReason ?? .cancelled) : machine.stopReason,
            forcedKill: forcedStop || machine.forcedKill,
            leftoverProcessesStopped: machine.leftoverProcessesStopped,
            outputTruncatedByDrainLimit: machine.outputTruncatedByDrainLimit,
            wallTime: .nanoseconds(exitedAt - record.startedAt),
            userCPUTime: .microseconds(exit?.user_usec ?? 0),
            systemCPUTime: .microseconds(exit?.system_usec ?? 0),
            maxResidentBytes: Int(exit?.max_rss_kib ?? 0) * 1024
        )
        record.handle.complete(with: outcome)
    }

    // MARK: Shutdown

    /// SIGKILL to every job still running, reap everything (bounded), complete every handle.
    private func shutDownEverything() {
        // Commands that raced with the shutdown: spawns fail, waits are answered below when their record completes.
        for command in shared.takeCommands().commands {
            if case .spawn(let request, let continuation) = command {
                continuation.resume(throwing: SpawnError.shutDown(request.spec))
            }
        }
        let all = Array(records.values)
        for record in all {
            signalJob(record, [SIGKILL])
        }
        let giveUpAt = System.monotonicNanoseconds() + TeardownStateMachine.vanishLimit
        for record in all {
            let stillRunning = record.exitedAt == nil
            // This is the monitor thread, not the cooperative pool: short sleeps are fine here.
            while record.pidfd >= 0 {
                reapMain(record, blocking: false)
                if record.pidfd < 0 || System.monotonicNanoseconds() >= giveUpAt { break }
                System.sleepOnMonitorThread(microseconds: 1000)
            }
            if record.exitedAt == nil {
                record.exitedAt = System.monotonicNanoseconds()
            }
            while !reapJob(record), System.monotonicNanoseconds() < giveUpAt {
                System.sleepOnMonitorThread(microseconds: 1000)
            }
            finish(record, forcedStop: stillRunning)
        }
        if sweepsOrphans {
            ChildRegistry.sweepOrphans(includingOwnSession: sweepsOwnSession)
        }
    }
}
