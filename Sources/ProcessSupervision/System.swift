import CRunnerShims
import Glibc

/// The raw system calls of ProcessSupervision, in one place (like swift-nio's `System.swift`).
///
/// Each wrapper names the C call it wraps. Failures come back as an errno value, never thrown: callers decide what a
/// failure means where they are.
enum System {
    /// The calling thread's `errno`.
    static var errno: Int32 { Glibc.errno }

    /// `strerror(errnum)` as a Swift string.
    static func describe(errno errnum: Int32) -> String {
        guard let text = strerror(errnum) else { return "errno \(errnum)" }
        return String(cString: text)
    }

    /// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
    static func monotonicNanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    /// `clock_gettime(CLOCK_BOOTTIME)` in nanoseconds: the clock of Swift's `ContinuousClock` on Linux (it keeps
    /// counting while the machine is suspended).
    static func boottimeNanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_BOOTTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    /// `getpid()`.
    static func processID() -> pid_t { getpid() }

    /// `getpgrp()`: the calling process's own process group.
    static func processGroup() -> pid_t { getpgrp() }

    /// `getsid(0)`: the calling process's session.
    static func session() -> pid_t { getsid(0) }

    /// `kill(-pgid, signal)`: 0 on success, else errno (ESRCH when the group is empty).
    static func signalGroup(_ pgid: pid_t, _ signal: Int32) -> Int32 {
        precondition(pgid > 1, "refusing to signal process group \(pgid)")
        return kill(-pgid, signal) == 0 ? 0 : Glibc.errno
    }

    /// `kill(-pgid, 0) == ESRCH` once the group's zombies are reaped: no process of the group exists any more.
    static func groupIsEmpty(_ pgid: pid_t) -> Bool {
        signalGroup(pgid, 0) == ESRCH
    }

    /// `open(path, O_RDONLY | O_CLOEXEC)`: the fd, or -errno.
    static func openReadOnly(_ path: String) -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        return fd >= 0 ? fd : -Glibc.errno
    }

    /// `close(fd)`, ignoring errors (on Linux the fd is released even when close reports EINTR).
    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// `read(fd, buffer, count)` retried on EINTR: bytes read, 0 at end of file, or -errno (-EAGAIN: nothing yet).
    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            let err = Glibc.errno
            if err != EINTR { return -Int(err) }
        }
    }

    /// `stat(path)` then `access(path, X_OK)`: nil if nothing is there, else whether it is a regular file we may run.
    static func executableStatus(_ path: String) -> (isRegularFile: Bool, isExecutable: Bool)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let isRegular = (info.st_mode & S_IFMT) == S_IFREG
        return (isRegular, isRegular && access(path, X_OK) == 0)
    }

    /// `nr_spawn`: clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD [| namespaces]) + the child set-up + execve
    /// (CRunnerShims).
    static func spawn(_ config: inout nr_spawn_config) -> nr_spawn_result {
        var result = nr_spawn_result()
        _ = nr_spawn(&config, &result)
        return result
    }

    /// `nr_output_pipe`: pipe2(O_CLOEXEC), read end O_NONBLOCK. (read, write) or the errno.
    static func outputPipe() -> Result<(read: Int32, write: Int32), Errno> {
        var fds: [Int32] = [-1, -1]
        guard nr_output_pipe(&fds) == 0 else { return .failure(Errno(Glibc.errno)) }
        return .success((fds[0], fds[1]))
    }

    /// `fcntl(fd, F_SETPIPE_SZ, size)` (CRunnerShims `nr_set_pipe_size`): 0 or errno.
    @discardableResult
    static func setPipeSize(_ fd: Int32, _ size: Int32) -> Int32 {
        nr_set_pipe_size(fd, size) == 0 ? 0 : Glibc.errno
    }

    /// `nr_children_watch_open`: opens the children files of the leader thread and of the calling thread, and the
    /// leader's stat; the errno when one cannot be opened.
    static func openChildrenWatch() -> Result<nr_children_watch, Errno> {
        var watch = nr_children_watch(leader_children_fd: -1, leader_stat_fd: -1, own_children_fd: -1)
        guard nr_children_watch_open(&watch) == 0 else { return .failure(Errno(Glibc.errno)) }
        return .success(watch)
    }

    /// `nr_children_watch_close`.
    static func closeChildrenWatch(_ watch: inout nr_children_watch) {
        nr_children_watch_close(&watch)
    }

    /// `nr_children_watch_read`: the children of the leader thread and of the thread that opened `watch`, into
    /// `pids`; how many, or nil when that cannot be told (a failed read, a leader thread that is exiting, too many).
    static func readChildrenWatch(_ watch: nr_children_watch, into pids: UnsafeMutableBufferPointer<pid_t>) -> Int? {
        let n = withUnsafePointer(to: watch) { nr_children_watch_read($0, pids.baseAddress, Int32(pids.count)) }
        return n >= 0 ? Int(n) : nil
    }

    /// `waitid(P_PIDFD, pidfd, WEXITED [| WNOHANG], &rusage)` (raw syscall, CRunnerShims `nr_reap_pidfd`).
    static func reap(pidfd: Int32, block: Bool) -> Result<nr_exit_info, Errno> {
        var info = nr_exit_info()
        while true {
            if nr_reap_pidfd(pidfd, block ? 0 : 1, &info) == 0 { return .success(info) }
            let err = Glibc.errno
            if err != EINTR { return .failure(Errno(err)) }
        }
    }

    /// `pidfd_send_signal(pidfd, signal)` (CRunnerShims `nr_pidfd_send_signal`): 0 or errno.
    static func signal(pidfd: Int32, _ signal: Int32) -> Int32 {
        nr_pidfd_send_signal(pidfd, signal) == 0 ? 0 : Glibc.errno
    }

    /// `waitid(P_ALL, 0, WEXITED | WNOHANG | WNOWAIT)`: the pid of a zombie child, without reaping it.
    static func peekZombieChild() -> pid_t? {
        var pid: pid_t = 0
        return nr_peek_zombie_child(&pid) == 1 ? pid : nil
    }

    /// `waitid(P_PID, pid, WEXITED | WNOHANG)`: true when the zombie was reaped.
    @discardableResult
    static func reapIfZombie(_ pid: pid_t) -> Bool {
        nr_reap_pid_nohang(pid) == 1
    }

    /// `waitid(P_PGID, pgid, WEXITED | WNOHANG)` until nothing is ready.
    static func reapGroupZombies(_ pgid: pid_t) {
        _ = nr_reap_group_nohang(pgid)
    }

    /// `getuid()`, `geteuid()`.
    static func userIDs() -> (real: uid_t, effective: uid_t) { (getuid(), geteuid()) }

    /// `prctl(PR_GET_CHILD_SUBREAPER)` (CRunnerShims `nr_is_child_subreaper`): 0 when the call works, else errno.
    static func childSubreaperQueryError() -> Int32 {
        nr_is_child_subreaper() >= 0 ? 0 : Glibc.errno
    }

    /// `nr_proc_stat`: /proc/<pid>/stat's state letter, parent, process group and start time.
    static func processStat(_ pid: pid_t) -> nr_proc_entry? {
        var entry = nr_proc_entry()
        return nr_proc_stat(pid, &entry) == 0 ? entry : nil
    }

    /// `nr_proc_snapshot`: every process in /proc (one pass; the buffer grows until all fit). nil when /proc
    /// cannot be read.
    static func processSnapshot() -> [nr_proc_entry]? {
        var capacity = 1024
        while true {
            var entries = [nr_proc_entry](repeating: nr_proc_entry(), count: capacity)
            let seen = entries.withUnsafeMutableBufferPointer { nr_proc_snapshot($0.baseAddress, Int32($0.count)) }
            if seen < 0 { return nil }
            if Int(seen) <= capacity { return Array(entries[0..<Int(seen)]) }
            capacity = Int(seen) + 256  // more processes than room: again, with room for some that started since
        }
    }

    /// `nr_proc_descendants`: the calling process's descendants; nil when /proc cannot be read or they are too many
    /// (more than 65536, or a process with 1024 children or more) for this walk.
    static func descendantSnapshot() -> [nr_proc_entry]? {
        var capacity = 256
        while capacity <= 1 << 16 {
            var entries = [nr_proc_entry](repeating: nr_proc_entry(), count: capacity)
            let seen = entries.withUnsafeMutableBufferPointer { nr_proc_descendants($0.baseAddress, Int32($0.count)) }
            if seen < 0 { return nil }
            if Int(seen) <= capacity { return Array(entries[0..<Int(seen)]) }
            capacity *= 4  // more descendants than room: again, with more
        }
        return nil
    }

    /// `nr_signal_process`: pidfd_open + start-time check + pidfd_send_signal, so a recycled pid is never hit.
    /// 0 or errno (ESRCH: gone, or the pid now names another process).
    static func signalProcess(_ pid: pid_t, startTime: UInt64, _ signal: Int32) -> Int32 {
        nr_signal_process(pid, startTime, signal) == 0 ? 0 : Glibc.errno
    }

    /// `pidfd_send_signal(pidfd, signal)` (CRunnerShims `nr_pidfd_signal`; `kill(pid)` where the kernel lacks it):
    /// 0 or errno. For a main process that is not reaped yet, so `pid` is still its own.
    static func signalProcess(pidfd: Int32, pid: pid_t, _ signal: Int32) -> Int32 {
        precondition(pid > 1, "refusing to signal pid \(pid)")
        return nr_pidfd_signal(pidfd, pid, signal) == 0 ? 0 : Glibc.errno
    }

    /// The raw bytes of /proc/<pid>/environ (`open`/`read`), or nil when unreadable (gone, a kernel thread, another
    /// user's). Empty for a zombie. A process whose main thread has exited while others run cannot be read there
    /// (ESRCH), yet is alive: its environment is read through one of its live threads.
    static func environment(of pid: pid_t) -> [UInt8]? {
        let bytes = readEnvironment("/proc/\(pid)/environ")
        if let bytes, !bytes.isEmpty { return bytes }
        for thread in numberedEntries(of: "/proc/\(pid)/task") where thread != pid {
            if let other = readEnvironment("/proc/\(pid)/task/\(thread)/environ"), !other.isEmpty { return other }
        }
        return bytes
    }

    /// The entries of a /proc directory that are numbers (`/proc`: processes; `/proc/<pid>/task`: its threads);
    /// empty when it cannot be read.
    static func numberedEntries(of path: String) -> [pid_t] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var numbers: [pid_t] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let number = pid_t(name) { numbers.append(number) }
        }
        return numbers
    }

    private static func readEnvironment(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0, Glibc.errno == EINTR { continue }
            guard n > 0 else { break }
            bytes += buffer[..<n]
        }
        return bytes
    }

    /// `nr_list_children`: the direct children of this process (/proc/self/task/*/children).
    static func children() -> [pid_t] {
        var pids = [pid_t](repeating: 0, count: 4096)
        let n = pids.withUnsafeMutableBufferPointer { nr_list_children($0.baseAddress, Int32($0.count)) }
        return n > 0 ? Array(pids[0..<Int(n)]) : []
    }

    /// `prctl(PR_SET_CHILD_SUBREAPER, 1)`: 0 or errno.
    static func becomeChildSubreaper() -> Int32 {
        nr_set_child_subreaper() == 0 ? 0 : Glibc.errno
    }

    /// `epoll_create1(EPOLL_CLOEXEC)`: the fd or -errno.
    static func epollCreate() -> Int32 {
        let fd = nr_epoll_create()
        return fd >= 0 ? fd : -Glibc.errno
    }

    /// `epoll_ctl(EPOLL_CTL_ADD, fd, EPOLLIN)` with `token` as the event data, `EPOLLONESHOT` with `once`: 0 or
    /// errno. Nothing removes it but closing `fd` (its only descriptor: none of these is ever duplicated), which
    /// saves an `epoll_ctl` per fd on every job's path.
    static func epollAdd(_ epfd: Int32, _ fd: Int32, token: UInt64, once: Bool = false) -> Int32 {
        nr_epoll_add(epfd, fd, token, once ? 1 : 0) == 0 ? 0 : Glibc.errno
    }

    /// `epoll_wait`: how many tokens were written (0 on timeout or EINTR).
    static func epollWait(
        _ epfd: Int32,
        tokens: UnsafeMutableBufferPointer<UInt64>,
        timeoutMilliseconds: Int32
    ) -> Int {
        let n = nr_epoll_wait(epfd, tokens.baseAddress, Int32(tokens.count), timeoutMilliseconds)
        return n > 0 ? Int(n) : 0
    }

    /// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`: the fd or -errno.
    static func eventFDCreate() -> Int32 {
        let fd = nr_eventfd_create()
        return fd >= 0 ? fd : -Glibc.errno
    }

    /// `write(eventfd, 1)`.
    static func eventFDSignal(_ fd: Int32) {
        _ = nr_eventfd_signal(fd)
    }

    /// `read(eventfd)`.
    static func eventFDDrain(_ fd: Int32) {
        nr_eventfd_drain(fd)
    }

    /// `usleep`: only for the monitor thread's final teardown at shutdown, never on the cooperative pool.
    static func sleepOnMonitorThread(microseconds: UInt32) {
        _ = usleep(microseconds)
    }

    /// `nr_watchdog_start` (CRunnerShims): socketpair, timerfd and the clone of a job watchdog process.
    static func startWatchdog() -> nr_watchdog_started {
        var started = nr_watchdog_started()
        _ = nr_watchdog_start(&started)
        return started
    }

    /// `nr_watchdog_send`: `send(fd, command, MSG_NOSIGNAL | MSG_DONTWAIT)`: 0 or errno.
    static func sendWatchdogCommand(_ fd: Int32, _ command: nr_watchdog_command) -> Int32 {
        withUnsafePointer(to: command) { nr_watchdog_send(fd, $0) }
    }

    /// `nr_watchdog_receive`: a blocking `recv` of the next report; nil at end of file.
    static func receiveWatchdogReport(_ fd: Int32) -> Result<nr_watchdog_report?, Errno> {
        var report = nr_watchdog_report()
        switch nr_watchdog_receive(fd, &report) {
        case 1: return .success(report)
        case 0: return .success(nil)
        default: return .failure(Errno(Glibc.errno))
        }
    }

    /// `nr_wait_exited`: `waitid(P_PIDFD, pidfd, WEXITED | WNOWAIT)`, blocking until the process is a zombie (not
    /// reaping it). 0 or errno. Only on a dedicated thread.
    static func waitUntilExited(pidfd: Int32) -> Int32 {
        nr_wait_exited(pidfd) == 0 ? 0 : Glibc.errno
    }

    /// `shutdown(fd, SHUT_WR)` (CRunnerShims `nr_shutdown_write`).
    static func shutdownWrite(_ fd: Int32) {
        _ = nr_shutdown_write(fd)
    }

    /// `pthread_create` of a joinable thread running `body`.
    static func startThread(_ body: @escaping @Sendable () -> Void) -> Result<pthread_t, Errno> {
        final class Box {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { raw in
                let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
                box.body()
                return nil
            }, box)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            return .failure(Errno(rc))
        }
        return .success(thread)
    }

    /// `prctl(PR_SET_NAME, name)` (CRunnerShims `nr_set_thread_name`): names the calling thread.
    static func nameCurrentThread(_ name: String) {
        _ = nr_set_thread_name(name)
    }

    /// Lets SIGCHLD of the children this thread clones be dropped on arrival (CRunnerShims
    /// `nr_accept_child_signals`): the monitor thread sees their ends through pidfds.
    static func acceptChildSignalsOnCurrentThread() {
        _ = nr_accept_child_signals()
    }

    /// `pthread_equal(pthread_self(), thread)`.
    static func isCurrentThread(_ thread: pthread_t) -> Bool {
        pthread_equal(pthread_self(), thread) != 0
    }

    /// `pthread_join(thread, NULL)`.
    static func join(_ thread: pthread_t) {
        _ = pthread_join(thread, nil)
    }

    /// `pthread_detach(thread)`.
    static func detach(_ thread: pthread_t) {
        _ = pthread_detach(thread)
    }
}

/// An errno value from a failed system call.
struct Errno: Error, Equatable {
    var value: Int32
    init(_ value: Int32) { self.value = value }
}

extension Duration {
    /// Whole nanoseconds, clamped to ±100 years so that adding it to a monotonic timestamp cannot overflow.
    var clampedNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let century: Int64 = 100 * 365 * 86_400
        return min(max(seconds, -century), century) * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
