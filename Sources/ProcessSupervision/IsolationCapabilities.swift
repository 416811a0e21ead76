import Glibc
import Synchronization

/// What isolation this host can give, found by trying: a trivial child is cloned with each feature's flags and runs
/// every set-up step of that feature (setsid; the namespaces with their own /proc, /sys and hostname, and without
/// capabilities, as `.namespace` runs by default; loopback in a new network namespace; setgroups/setresgid/setresuid;
/// the capability drop on its own), then exits instead of exec'ing anything.
public struct IsolationCapabilities: Sendable, Equatable {
    /// Whether one feature is there.
    public enum Support: Sendable, Equatable {
        /// The probe child got through every step.
        case available
        /// Why not, e.g. "clone failed: Operation not permitted".
        case missing(reason: String)

        /// True for `.available`.
        public var isAvailable: Bool { self == .available }
        /// The reason of `.missing`, nil when available.
        public var reason: String? {
            if case .missing(let reason) = self { return reason }
            return nil
        }
    }

    /// Own session and process group, with the runner able to be a child subreaper (`.processGroup`).
    public var processGroup: Support
    /// New PID, mount (own /proc and /sys), IPC and UTS namespaces, with every capability dropped (`.namespace`
    /// with its default `dropsCapabilities`).
    public var namespaces: Support
    /// A new network namespace with loopback up (`NamespaceOptions.isolatesNetwork`).
    public var networkNamespace: Support
    /// Running a job as another user (`ProcessIsolation.credentials`): needs root.
    public var runAs: Support
    /// Running a job without capabilities (`ProcessIsolation.dropsCapabilities`) at `.processGroup`: emptying the
    /// bounding set needs CAP_SETPCAP.
    public var capabilityDrop: Support

    /// Capabilities; normally found by `probe()`. `capabilityDrop` defaults to available (root can always drop).
    public init(
        processGroup: Support, namespaces: Support, networkNamespace: Support, runAs: Support,
        capabilityDrop: Support = .available
    ) {
        self.processGroup = processGroup
        self.namespaces = namespaces
        self.networkNamespace = networkNamespace
        self.runAs = runAs
        self.capabilityDrop = capabilityDrop
    }

    /// Why `isolation` cannot be given here ("namespace isolation: ..."), or nil when it can.
    public func missing(for isolation: ProcessIsolation) -> String? {
        var needed: [(String, Support)] = []
        switch isolation.level {
        case .none:
            break
        case .processGroup:
            needed.append(("process group isolation", processGroup))
        case .namespace:
            needed.append(("process group isolation", processGroup))
            needed.append(("namespace isolation", namespaces))
            if isolation.namespaces.isolatesNetwork {
                needed.append(("an isolated network", networkNamespace))
            }
        }
        if isolation.credentials != nil {
            needed.append(("running as another user", runAs))
        }
        if isolation.dropsCapabilities {
            needed.append(("dropping capabilities", capabilityDrop))
        }
        return needed.first { !$0.1.isAvailable }.map { "\($0.0) is not available: \($0.1.reason ?? "")" }
    }

    private static let known = Mutex<IsolationCapabilities?>(nil)

    /// Probes once per process (on a thread of its own: the probe children are waited for blocking) and returns the
    /// cached answer afterwards.
    public static func probe() async -> IsolationCapabilities {
        if let cached = known.withLock({ $0 }) { return cached }
        let found = await withCheckedContinuation { (continuation: CheckedContinuation<Self, Never>) in
            let started = System.startThread {
                System.nameCurrentThread("nr-probe")
                continuation.resume(returning: measure())
            }
            switch started {
            case .success(let thread):
                System.detach(thread)
            case .failure(let err):
                let reason = Support.missing(
                    reason: "the probe thread could not start: \(System.describe(errno: err.value))")
                continuation.resume(
                    returning: Self(
                        processGroup: reason, namespaces: reason, networkNamespace: reason, runAs: reason,
                        capabilityDrop: reason))
            }
        }
        return known.withLock { cached in
            if cached == nil { cached = found }
            return cached!
        }
    }

    /// Tries every feature; blocks for a few milliseconds per probe child.
    static func measure() -> IsolationCapabilities {
        let subreaperError = System.childSubreaperQueryError()
        let processGroup =
            subreaperError != 0
            ? .missing(reason: "prctl(PR_GET_CHILD_SUBREAPER) failed: \(System.describe(errno: subreaperError))")
            : tryChild(ProcessIsolation(level: .processGroup))
        let namespaces = tryChild(ProcessIsolation(level: .namespace, hostname: "nr-probe"))
        let networkNamespace =
            namespaces.isAvailable
            ? tryChild(ProcessIsolation(level: .namespace, namespaces: .init(isolatesNetwork: true)))
            : namespaces
        let effectiveUser = System.userIDs().effective
        let runAs =
            effectiveUser != 0
            ? .missing(reason: "the runner does not run as root (euid \(effectiveUser))")
            : tryChild(ProcessIsolation(credentials: .init(uid: 65534, gid: 65534)))
        let capabilityDrop = tryChild(ProcessIsolation(level: .processGroup, dropsCapabilities: true))
        return IsolationCapabilities(
            processGroup: processGroup,
            namespaces: namespaces,
            networkNamespace: networkNamespace,
            runAs: runAs,
            capabilityDrop: capabilityDrop
        )
    }

    /// Clones a child with `isolation` that runs every set-up step, then exits 0 without exec.
    private static func tryChild(_ isolation: ProcessIsolation) -> Support {
        // A path with a slash is taken as is: nothing is looked up, and nothing is executed.
        let spec = ProcessSpec(executable: "/", arguments: ["nr-probe"], isolation: isolation)
        let prepared: SpawnPreparation
        do {
            prepared = try SpawnPreparation(spec)
        } catch {
            return .missing(reason: error.message)
        }
        guard let arguments = SpawnArguments(prepared, spec: spec) else {
            return .missing(reason: "copying the probe's arguments failed: \(System.describe(errno: ENOMEM))")
        }
        var config = arguments.config(stdin: -1, stdout: -1, stderr: -1, probeOnly: true)
        // Held until the probe child is reaped (inside nr_spawn): no orphan sweep may reap it first.
        let result = withExtendedLifetime(arguments) {
            ChildRegistry.watched.withLock { _ in System.spawn(&config) }
        }
        if result.pid > 0 { return .available }
        let step = SpawnStep(reported: result.failed_step).map(String.init(describing:)) ?? "the probe"
        return .missing(reason: "\(step) failed: \(System.describe(errno: result.failed_errno))")
    }
}
