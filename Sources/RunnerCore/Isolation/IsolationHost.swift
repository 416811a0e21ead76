import Foundation
import ProcessSupervision
import RunnerProtocol
import Synchronization

/// The isolation a host can give and the runner's means to give it, found once at start: the kernel's features
/// (probed), the cgroup hierarchy and the runner's cgroup parent, the work folders. Decides, per job, at which level
/// and with which limits it runs (`plan(for:)`), or why it cannot.
final class IsolationHost: Sendable {
    let configuration: IsolationConfiguration
    let capabilities: IsolationCapabilities
    /// nil when the host has no usable cgroups for jobs; `cgroupUnavailable` then says why.
    let cgroups: (any CgroupDriver)?
    let cgroupUnavailable: String?
    let workspace: JobWorkspace
    let sampler = ResourceSampler()
    /// The runner's own peak resident size, to tell a job's ru_maxrss from the runner's.
    let runnerPeak = RunnerPeakMemory()
    /// Host memory at start, for refusing jobs that declare more than the host has at all.
    let hostMemoryBytes: UInt64?
    /// The folders `start` made (the work root, the runner's folder, its cgroup parents), innermost first: what a
    /// start that fails afterwards removes (`removeMadeAtStart`). What was there already may be a live runner's.
    let madeAtStart: [String]

    init(
        configuration: IsolationConfiguration, capabilities: IsolationCapabilities, cgroups: (any CgroupDriver)?,
        cgroupUnavailable: String?, workspace: JobWorkspace, hostMemoryBytes: UInt64?, madeAtStart: [String] = []
    ) {
        self.madeAtStart = madeAtStart
        self.configuration = configuration
        self.capabilities = capabilities
        self.cgroups = cgroups
        self.cgroupUnavailable = cgroupUnavailable
        self.workspace = workspace
        self.hostMemoryBytes = hostMemoryBytes
    }

    /// Makes the work root and the runner's folder in it, then probes the kernel, detects the cgroup layout and
    /// prepares the runner's cgroup parent (logging what it found). A host without cgroups still runs jobs at the
    /// other levels. Throws, before any cgroup is made, when the work root cannot be used.
    /// `contextName` names the runner's folder and cgroup parent (`runnerContextName`).
    static func start(
        configuration: IsolationConfiguration, contextName: String, logger: Logger
    ) async throws(IsolationError) -> IsolationHost {
        let workspace = JobWorkspace(
            root: configuration.workRoot, runner: contextName,
            owner: configuration.runAs.map { (uid: $0.uid, gid: $0.gid) })
        var made = [workspace.directory, configuration.workRoot].filter { !pathExists($0) }
        try await workspace.prepare()
        // Before the lease is taken (Worker: this start, then the lease): a folder that was there already (a run of
        // this name that died) is fresh again, so that another runner's `DeadRunnerContexts` leaves it alone.
        utimensat(AT_FDCWD, workspace.directory, nil, AT_SYMLINK_NOFOLLOW)
        let capabilities = await IsolationCapabilities.probe()
        var driver: (any CgroupDriver)?
        var unavailable: String?
        do {
            let hierarchy = try CgroupHierarchy.detect()
            // One short line at info; the mounts, the runner's cgroups and the parent's controllers at debug (a
            // start that then fails leaves its Error: under a line, not under two screens).
            logger.info(hierarchy.summary)
            logger.debug(hierarchy.description)
            // Each runner has a parent of its own, also under a shared `--cgroup-parent`: a runner's cleanup removes
            // every job cgroup in its parent that is none of its jobs, so two runners in one parent would kill each
            // other's jobs; and a dead runner's parent is then found beside the others'.
            let own = "nativerunner-\(contextName)"
            let parent: CgroupParent =
                configuration.cgroupParent.map { .fromRoot(Self.path($0, own)) } ?? .belowOwnCgroup(own)
            let candidate = hierarchy.makeDriver(parent: parent)
            made = candidate.parentDirectories.filter { !pathExists($0) } + made
            let preparation = try candidate.prepareParent()
            candidate.touchParent()
            logger.debug(preparation.description)
            let needed = ["memory", "pids", "cpu"]
            let missing = needed.filter { !preparation.controllers.contains($0) }
            if missing.isEmpty {
                driver = candidate
            } else {
                unavailable =
                    "the cgroup controllers \(missing.joined(separator: ", ")) are not available ("
                    + preparation.missingControllers.joined(separator: "; ") + ")"
            }
        } catch {
            unavailable = error.message
        }
        if let unavailable { logger.warning("cgroup isolation is not available: \(unavailable)") }
        for (name, support) in [
            ("namespace isolation", capabilities.namespaces), ("network isolation", capabilities.networkNamespace),
        ] {
            if let reason = support.reason { logger.warning("\(name) is not available: \(reason)") }
        }
        return IsolationHost(
            configuration: configuration, capabilities: capabilities, cgroups: driver,
            cgroupUnavailable: unavailable, workspace: workspace,
            hostMemoryBytes: try? ResourceSampler().memory().totalBytes, madeAtStart: made.filter(pathExists))
    }

    /// `base/name`, without a doubled slash when `base` ends with one.
    static func path(_ base: String, _ name: String) -> String {
        base.hasSuffix("/") ? base + name : base + "/" + name
    }

    /// When the start fails after `start`: removes the folders it made, if nothing is in them.
    func removeMadeAtStart() {
        for directory in madeAtStart { rmdir(directory) }
    }

    /// At a clean exit: removes the runner's cgroup parent and work directory if nothing is left in them.
    func removeOwnContexts() {
        for directory in cgroups?.parentDirectories ?? [] { rmdir(directory) }
        workspace.removeSpares()
        rmdir(workspace.directory)
    }

    /// Why `level` (with `network`) cannot be given here; nil when it can.
    func missing(_ level: IsolationLevel, network: NetworkMode) -> String? {
        // The probe's own verdict for the process side, asked with what the spawn would ask for.
        let asked = ProcessIsolation(
            level: level.processLevel,
            namespaces: .init(isolatesNetwork: level >= .namespace && network == .none),
            credentials: configuration.runAs.map { .init(uid: $0.uid, gid: $0.gid) })
        if let reason = capabilities.missing(for: asked) { return reason }
        if level >= .cgroup, cgroups == nil {
            return "cgroup isolation is not available: \(cgroupUnavailable ?? "no cgroup driver")"
        }
        return nil
    }

    /// The level, network and limits a job runs with, or why it is refused: a level or limit the host cannot give
    /// (unless the runner falls back), a limit above the ceilings, more memory than the host has.
    func plan(for entry: JobEntry) -> Result<IsolationPlan, IsolationError> {
        let spec = entry.spec
        let network = spec.network ?? .host
        var requested = spec.isolation ?? configuration.defaultLevel
        // A job that names no level gets at least the least level that gives what it asks for: no network
        // (`namespace`), a cgroup limit (`cgroup`).
        if spec.isolation == nil {
            requested = max(requested, IsolationShortfall.least(for: network, limits: spec.limits))
        }
        if let shortfall = IsolationShortfall.first(network: network, limits: spec.limits, at: requested) {
            return .failure(IsolationError(.unsupported, shortfall.message))
        }
        var level = requested
        var effectiveNetwork = network
        if let reason = missing(requested, network: network) {
            guard configuration.fallback else { return .failure(IsolationError(.unsupported, reason)) }
            // The strongest the host has: the same level without the isolated network, else a weaker level.
            if network == .none, missing(requested, network: .host) == nil {
                effectiveNetwork = .host
            } else if let weaker = IsolationLevel.allCases.reversed().first(where: {
                $0 < requested && missing($0, network: .host) == nil
            }) {
                level = weaker
                effectiveNetwork = .host
            } else {
                return .failure(IsolationError(.unsupported, reason))
            }
        }
        // After a fallback below `cgroup` nothing enforces the cgroup's limits: they are not in force, and not
        // reported as such.
        var limits = spec.limits.enforced(at: level)
        if level >= .cgroup { limits = limits.merged(over: configuration.defaultLimits) }
        if let reason = limits.exceeding(configuration.ceilings) {
            return .failure(IsolationError(.aboveCeiling, reason))
        }
        if let memory = limits.memoryBytes, let total = hostMemoryBytes, UInt64(memory) > total {
            return .failure(
                IsolationError(
                    .aboveCeiling, "limits.memory_bytes \(memory) is more than this host's memory of \(total) bytes"))
        }
        return .success(
            IsolationPlan(
                level: level, requested: requested, network: effectiveNetwork, limits: limits,
                contextName: isolationContextName(jobId: entry.jobId, delivery: entry.deliveryKey),
                requestedNetwork: network))
    }
}

/// How one attempt is contained.
struct IsolationPlan: Sendable, Equatable {
    var level: IsolationLevel
    /// What the job (or the runner's default) asked for; differs from `level` only after a fallback.
    var requested: IsolationLevel
    var network: NetworkMode
    /// The limits in force.
    var limits: JobLimits
    /// The name of its work folder and cgroup.
    var contextName: String
    /// The network asked for.
    var requestedNetwork: NetworkMode

    /// The runner gave less than was asked (`--isolation-fallback`).
    var fellBack: Bool { level != requested || network != requestedNetwork }
}

/// The runner's own peak resident size (`VmHWM` of /proc/self/status; not getrusage, whose ru_maxrss also holds
/// the peak of the process that started the runner), read at most once a second.
final class RunnerPeakMemory: Sendable {
    /// How far above the runner's peak a job's ru_maxrss must be to be the job's own: the runner's peak can have
    /// grown since it was read.
    static let margin: UInt64 = 4 << 20

    private let cached = Mutex<(bytes: UInt64, readAt: ContinuousClock.Instant?)>((0, nil))

    func bytes() -> UInt64 {
        let now = ContinuousClock.now
        if let fresh = cached.withLock({ state in
            state.readAt.map { now - $0 < .seconds(1) } == true ? state.bytes : nil
        }) {
            return fresh
        }
        // Unreadable: as if the runner were large, so that no figure is taken for the job's own.
        let bytes = ResourceSampler().peakResidentBytes(of: getpid()) ?? .max / 2
        cached.withLock { $0 = (bytes, now) }
        return bytes
    }
}
