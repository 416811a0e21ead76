import CRunnerShims
import Glibc

/// A child could not be started.
public struct SpawnError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What kind of failure.
    public enum Code: Sendable, Equatable {
        /// ENOENT/ENOTDIR/ELOOP/ENAMETOOLONG for the executable, or a bare name not found in PATH.
        case executableNotFound
        /// EACCES/EPERM: found, but we may not execute it.
        case permissionDenied
        /// ENOEXEC and kin: found and permitted, but not something the kernel can run.
        case notExecutable
        /// chdir to the working directory failed.
        case invalidWorkingDirectory
        /// E2BIG from execve.
        case argumentListTooLong
        /// ENOMEM/EAGAIN/EMFILE/ENFILE: out of processes, memory or fds.
        case resourceExhausted
        /// A step of the isolation (cgroups, namespaces, rlimits, credentials, no-new-privileges) failed.
        case isolationFailed
        /// Anything else (including a NUL byte in an argument, EINVAL, and a supervisor that was shut down).
        case systemError
    }

    /// What kind of failure.
    public var code: Code
    /// The errno of the failed call (0 when there was none).
    public var errno: Int32
    /// What failed and where, e.g. "cannot execute 'nosuchcmd': No such file or directory".
    public var message: String
    /// The step of starting the child that failed; nil when the spec was rejected before the clone (or the
    /// supervisor was shut down).
    public var step: SpawnStep?
    /// True when the failure is the supervisor's own, not the job's: a set-up step in the parent (pipes, the child
    /// stack, clone, epoll) failed, resources ran out, or the supervisor was shut down. The same job may start
    /// fine later, so a caller should not record it as the job's failure. Joining the runner's cgroups counts as
    /// the supervisor's side too.
    public var isSupervisorSide: Bool

    /// An error; normally made by the supervisor.
    public init(code: Code, errno: Int32, message: String, step: SpawnStep? = nil, isSupervisorSide: Bool = false) {
        self.code = code
        self.errno = errno
        self.message = message
        self.step = step
        self.isSupervisorSide = isSupervisorSide || code == .resourceExhausted
    }

    /// Shell convention: 127 when the command is not found, 126 when it cannot be executed for any other reason
    /// (not executable, permission, bad working directory, argument list too long, out of resources).
    public var conventionalExitCode: Int32 {
        switch code {
        case .executableNotFound: 127
        case .permissionDenied, .notExecutable, .invalidWorkingDirectory, .argumentListTooLong, .resourceExhausted,
            .isolationFailed, .systemError:
            126
        }
    }

    /// The message.
    public var description: String { message }
}

/// A step of starting a child, in the order they run (parent steps before the clone, then the child's).
public enum SpawnStep: Sendable, Equatable, CaseIterable, CustomStringConvertible {
    /// Parent: opening a `cgroup.procs` file.
    case openCgroup
    /// Parent: pidfd_open of the runner, for the parent-death check inside a new PID namespace.
    case parentPidfd
    /// Parent: mmap of the child's stack.
    case childStack
    /// Parent: clone (with the namespace flags).
    case clone
    /// Child: setsid.
    case setsid
    /// Child: writing "0" to a `cgroup.procs` file.
    case joinCgroup
    /// Child: making every mount private.
    case mountPrivate
    /// Child: mounting the new /proc.
    case mountProc
    /// Child: detaching the host's /sys and mounting a new read-only sysfs there.
    case mountSys
    /// Child: sethostname.
    case setHostname
    /// Child: bringing the loopback interface up.
    case loopbackUp
    /// Child: prlimit64 of one resource limit.
    case resourceLimit
    /// Child: prctl(PR_CAPBSET_DROP) of one capability of the bounding set (or PR_CAPBSET_READ of it).
    case dropBoundingCapability
    /// Child: setgroups(0, NULL).
    case dropGroups
    /// Child: setresgid.
    case setGroupID
    /// Child: setresuid.
    case setUserID
    /// Child: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL).
    case clearAmbientCapabilities
    /// Child: capset of empty effective, permitted and inheritable sets.
    case dropCapabilities
    /// Child: prctl(PR_SET_PDEATHSIG).
    case deathSignal
    /// Child: prctl(PR_SET_NO_NEW_PRIVS).
    case noNewPrivileges
    /// Child: redirecting stdin, stdout, stderr.
    case stdio
    /// Child: closing every other fd.
    case closeFileDescriptors
    /// Child: chdir to the working directory.
    case changeDirectory
    /// Child: execve.
    case exec

    /// What the step does, as an error message names it.
    public var description: String {
        switch self {
        case .openCgroup: "opening cgroup.procs"
        case .parentPidfd: "pidfd_open of the runner"
        case .childStack: "mmap of the child stack"
        case .clone: "clone"
        case .setsid: "setsid"
        case .joinCgroup: "joining the cgroup"
        case .mountPrivate: "making mounts private"
        case .mountProc: "mounting /proc"
        case .mountSys: "mounting /sys"
        case .setHostname: "sethostname"
        case .loopbackUp: "bringing up lo"
        case .resourceLimit: "setrlimit"
        case .dropBoundingCapability: "prctl(PR_CAPBSET_DROP)"
        case .dropGroups: "setgroups"
        case .setGroupID: "setresgid"
        case .setUserID: "setresuid"
        case .clearAmbientCapabilities: "prctl(PR_CAP_AMBIENT_CLEAR_ALL)"
        case .dropCapabilities: "capset"
        case .deathSignal: "prctl(PR_SET_PDEATHSIG)"
        case .noNewPrivileges: "prctl(PR_SET_NO_NEW_PRIVS)"
        case .stdio: "redirecting stdio"
        case .closeFileDescriptors: "closing fds"
        case .changeDirectory: "chdir"
        case .exec: "execve"
        }
    }

    /// The step `nr_spawn` reported; nil for a value it does not define.
    init?(reported step: Int32) {
        let steps: [UInt32: SpawnStep] = [
            NR_STEP_OPEN_CGROUP.rawValue: .openCgroup, NR_STEP_PARENT_PIDFD.rawValue: .parentPidfd,
            NR_STEP_STACK.rawValue: .childStack,
            NR_STEP_CLONE.rawValue: .clone, NR_STEP_SETSID.rawValue: .setsid,
            NR_STEP_JOIN_CGROUP.rawValue: .joinCgroup, NR_STEP_MOUNT_PRIVATE.rawValue: .mountPrivate,
            NR_STEP_MOUNT_PROC.rawValue: .mountProc, NR_STEP_SET_HOSTNAME.rawValue: .setHostname,
            NR_STEP_LOOPBACK.rawValue: .loopbackUp, NR_STEP_RLIMIT.rawValue: .resourceLimit,
            NR_STEP_SETGROUPS.rawValue: .dropGroups, NR_STEP_SETGID.rawValue: .setGroupID,
            NR_STEP_SETUID.rawValue: .setUserID, NR_STEP_PDEATHSIG.rawValue: .deathSignal,
            NR_STEP_NO_NEW_PRIVS.rawValue: .noNewPrivileges, NR_STEP_STDIO.rawValue: .stdio,
            NR_STEP_CLOSE_FDS.rawValue: .closeFileDescriptors, NR_STEP_CHDIR.rawValue: .changeDirectory,
            NR_STEP_EXEC.rawValue: .exec, NR_STEP_MOUNT_SYS.rawValue: .mountSys,
            NR_STEP_CAPBSET_DROP.rawValue: .dropBoundingCapability,
            NR_STEP_CLEAR_AMBIENT.rawValue: .clearAmbientCapabilities, NR_STEP_CAPSET.rawValue: .dropCapabilities,
        ]
        guard step >= 0, let known = steps[UInt32(step)] else { return nil }
        self = known
    }

    /// Runs in the parent, before the clone (or is the clone).
    var isParentSide: Bool {
        switch self {
        case .openCgroup, .parentPidfd, .childStack, .clone: true
        default: false
        }
    }

    /// Part of the isolation set-up rather than of starting a plain process.
    var isIsolation: Bool {
        switch self {
        case .openCgroup, .joinCgroup, .mountPrivate, .mountProc, .mountSys, .setHostname, .loopbackUp,
            .resourceLimit, .dropBoundingCapability, .dropGroups, .setGroupID, .setUserID, .clearAmbientCapabilities,
            .dropCapabilities, .noNewPrivileges:
            true
        default: false
        }
    }
}

extension SpawnError {
    /// The error for a failed step of `nr_spawn` (parent or child side); `index` names the cgroup file or the
    /// resource limit of the steps that have several.
    init(step rawStep: Int32, errno err: Int32, index: Int32, spec: ProcessSpec) {
        let reason = System.describe(errno: err)
        let name = spec.executable
        guard let step = SpawnStep(reported: rawStep) else {
            self.init(
                code: .systemError, errno: err, message: "cannot start '\(name)': step \(rawStep) failed: \(reason)")
            return
        }
        switch step {
        case .exec:
            switch err {
            case E2BIG:
                let message = "argument list too long (E2BIG) for '\(name)'"
                self.init(code: .argumentListTooLong, errno: err, message: message, step: step)
            default:
                let message = "cannot execute '\(name)': \(reason)"
                self.init(code: Self.execCode(err), errno: err, message: message, step: step)
            }
        case .changeDirectory:
            let directory = spec.workingDirectory ?? ""
            self.init(
                code: .invalidWorkingDirectory,
                errno: err,
                message: "cannot change to working directory '\(directory)': \(reason)",
                step: step
            )
        default:
            let what = Self.describe(step, index: Int(index), isolation: spec.isolation)
            let isolationCode: Code = step.isIsolation ? .isolationFailed : .systemError
            let code = Self.resourceCode(err) == .resourceExhausted ? .resourceExhausted : isolationCode
            self.init(
                code: code,
                errno: err,
                message: "cannot start '\(name)': \(what) failed: \(reason)",
                step: step,
                isSupervisorSide: step.isParentSide || step == .joinCgroup
            )
        }
    }

    /// The step, with the cgroup file or the limit it worked on.
    private static func describe(_ step: SpawnStep, index: Int, isolation: ProcessIsolation) -> String {
        switch step {
        case .openCgroup, .joinCgroup:
            guard isolation.cgroupProcsFiles.indices.contains(index) else { return step.description }
            return "\(step) (\(isolation.cgroupProcsFiles[index]))"
        case .resourceLimit:
            guard isolation.resourceLimits.indices.contains(index) else { return step.description }
            let limit = isolation.resourceLimits[index]
            let soft = limit.soft.map(String.init) ?? "unlimited"
            let hard = limit.hard.map(String.init) ?? "unlimited"
            return "setrlimit(\(limit.kind), soft \(soft), hard \(hard))"
        case .setHostname:
            return isolation.hostname.map { "\(step)('\($0)')" } ?? step.description
        case .dropBoundingCapability:
            return "\(step) (capability \(index))"
        case .setGroupID, .setUserID:
            guard let credentials = isolation.credentials else { return step.description }
            return step == .setUserID ? "setresuid(\(credentials.uid))" : "setresgid(\(credentials.gid))"
        default:
            return step.description
        }
    }

    static func notFound(_ spec: ProcessSpec) -> SpawnError {
        SpawnError(
            code: .executableNotFound,
            errno: ENOENT,
            message: "cannot execute '\(spec.executable)': \(System.describe(errno: ENOENT))"
        )
    }

    static func invalidArgument(_ spec: ProcessSpec, _ what: String) -> SpawnError {
        SpawnError(code: .systemError, errno: EINVAL, message: "cannot start '\(spec.executable)': \(what)")
    }

    static func setupFailed(_ spec: ProcessSpec, _ what: String, errno err: Int32) -> SpawnError {
        SpawnError(
            code: resourceCode(err),
            errno: err,
            message: "cannot start '\(spec.executable)': \(what) failed: \(System.describe(errno: err))",
            isSupervisorSide: true
        )
    }

    static func shutDown(_ spec: ProcessSpec) -> SpawnError {
        SpawnError(
            code: .systemError,
            errno: ESHUTDOWN,
            message: "cannot start '\(spec.executable)': the process supervisor has been shut down",
            isSupervisorSide: true
        )
    }

    private static func execCode(_ err: Int32) -> Code {
        switch err {
        case ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG: .executableNotFound
        case EACCES, EPERM: .permissionDenied
        case ENOEXEC, EISDIR, ETXTBSY, ELIBBAD, EINVAL: .notExecutable
        default: resourceCode(err)
        }
    }

    private static func resourceCode(_ err: Int32) -> Code {
        switch err {
        case ENOMEM, EAGAIN, EMFILE, ENFILE: .resourceExhausted
        default: .systemError
        }
    }
}

/// The supervisor could not be set up.
public struct SupervisorError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What kind of failure.
    public enum Code: Sendable, Equatable {
        /// A system call needed to set up the supervisor failed.
        case setupFailed
    }

    /// What kind of failure.
    public var code: Code
    /// The errno of the failed call.
    public var errno: Int32
    /// What failed and where, e.g. "cannot create the monitor's epoll instance: Too many open files".
    public var message: String

    /// An error; normally made by the supervisor.
    public init(code: Code, errno: Int32, message: String) {
        self.code = code
        self.errno = errno
        self.message = message
    }

    /// The message.
    public var description: String { message }

    static func setup(_ what: String, errno err: Int32) -> SupervisorError {
        SupervisorError(code: .setupFailed, errno: err, message: "cannot \(what): \(System.describe(errno: err))")
    }
}

/// The job watchdog could not be started, or could not be told something.
public struct WatchdogError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What kind of failure.
    public enum Code: Sendable, Equatable {
        /// A system call needed to start the watchdog failed (socketpair, timerfd_create, clone, pthread_create).
        case setupFailed
        /// `watch(processGroup:)` found `JobWatchdog.capacity` groups watched already.
        case tableFull
        /// Not a process group the watchdog may kill: 1 or less (kill(-1) reaches every process), or its own.
        case invalidProcessGroup
        /// The watchdog's command queue is full (EAGAIN): it has not read for a long while (stopped, or hung).
        case unresponsive
        /// The watchdog has exited, or is exiting: `stop()` or `simulateRunnerDeath()` was called, or it died.
        case gone
        /// The command could not be sent for another reason (see `errno`).
        case sendFailed
    }

    /// What kind of failure.
    public var code: Code
    /// The errno of the failed call (0 when there was none).
    public var errno: Int32
    /// What failed and where, e.g. "job watchdog (pid 17): cannot watch process group 4242: it watches 4096 groups
    /// already".
    public var message: String

    /// An error; normally made by the watchdog.
    public init(code: Code, errno: Int32, message: String) {
        self.code = code
        self.errno = errno
        self.message = message
    }

    /// The message.
    public var description: String { message }
}
