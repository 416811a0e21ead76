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
        /// Anything else (including a NUL byte in an argument, EINVAL, and a supervisor that was shut down).
        case systemError
    }

    /// What kind of failure.
    public var code: Code
    /// The errno of the failed call (0 when there was none).
    public var errno: Int32
    /// What failed and where, e.g. "cannot execute 'nosuchcmd': No such file or directory".
    public var message: String
    /// True when the failure is the supervisor's own, not the job's: a set-up step in the parent (pipes, the child
    /// stack, clone, epoll) failed, resources ran out, or the supervisor was shut down. The same job may start
    /// fine later, so a caller should not record it as the job's failure.
    public var isSupervisorSide: Bool

    /// An error; normally made by the supervisor.
    public init(code: Code, errno: Int32, message: String, isSupervisorSide: Bool = false) {
        self.code = code
        self.errno = errno
        self.message = message
        self.isSupervisorSide = isSupervisorSide || code == .resourceExhausted
    }

    /// Shell convention: 127 when the command is not found, 126 when it cannot be executed for any other reason
    /// (not executable, permission, bad working directory, argument list too long, out of resources).
    public var conventionalExitCode: Int32 {
        switch code {
        case .executableNotFound: 127
        case .permissionDenied, .notExecutable, .invalidWorkingDirectory, .argumentListTooLong, .resourceExhausted,
            .systemError:
            126
        }
    }

    /// The message.
    public var description: String { message }
}

extension SpawnError {
    /// The error for a failed step of `nr_spawn` (parent or child side).
    init(step: Int32, errno err: Int32, spec: ProcessSpec) {
        let reason = System.describe(errno: err)
        let name = spec.executable
        switch UInt32(step) {
        case NR_STEP_EXEC.rawValue:
            switch err {
            case E2BIG:
                let message = "argument list too long (E2BIG) for '\(name)'"
                self.init(code: .argumentListTooLong, errno: err, message: message)
            default:
                self.init(code: Self.execCode(err), errno: err, message: "cannot execute '\(name)': \(reason)")
            }
        case NR_STEP_CHDIR.rawValue:
            let directory = spec.workingDirectory ?? ""
            self.init(
                code: .invalidWorkingDirectory,
                errno: err,
                message: "cannot change to working directory '\(directory)': \(reason)"
            )
        default:
            self.init(
                code: Self.resourceCode(err),
                errno: err,
                message: "cannot start '\(name)': \(Self.stepName(step)) failed: \(reason)"
            )
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

    private static func stepName(_ step: Int32) -> String {
        switch UInt32(step) {
        case NR_STEP_REPORT_PIPE.rawValue: "pipe2"
        case NR_STEP_STACK.rawValue: "mmap of the child stack"
        case NR_STEP_CLONE.rawValue: "clone"
        case NR_STEP_SETSID.rawValue: "setsid"
        case NR_STEP_PDEATHSIG.rawValue: "prctl(PR_SET_PDEATHSIG)"
        case NR_STEP_STDIO.rawValue: "redirecting stdio"
        case NR_STEP_CLOSE_FDS.rawValue: "closing fds"
        default: "step \(step)"
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
