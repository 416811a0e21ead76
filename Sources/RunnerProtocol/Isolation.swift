/// How strongly a job is contained. Each level includes the ones before it.
public enum IsolationLevel: String, Sendable, CaseIterable, Comparable, Codable {
    /// A plain child process.
    case none
    /// Own session and process group; escapees are still found through the subreaper.
    case processGroup = "process_group"
    /// New PID, mount (own /proc), IPC and UTS namespaces; optionally a network namespace.
    case namespace
    /// Namespaces plus a cgroup of its own with memory, pids and CPU limits.
    case cgroup

    private var rank: Int { IsolationLevel.allCases.firstIndex(of: self)! }
    public static func < (lhs: IsolationLevel, rhs: IsolationLevel) -> Bool { lhs.rank < rhs.rank }

    /// The accepted spellings, for messages.
    public static let spellings = allCases.map(\.rawValue).joined(separator: ", ")
}

/// The network a job sees.
public enum NetworkMode: String, Sendable, CaseIterable, Codable {
    /// The runner's network.
    case host
    /// A network namespace of its own with only loopback up (needs isolation `namespace` or `cgroup`).
    case none

    public static let spellings = allCases.map(\.rawValue).joined(separator: ", ")
}

/// Something a job asks for that its isolation level cannot enforce: the one rule of which level each ask needs,
/// applied by the runner's planning (a rejection) and by `runner submit` (refused before anything is queued).
public struct IsolationShortfall: Sendable, Equatable {
    /// `network`, or the limit's key in `limits` (`memory_bytes`, ...).
    public var key: String
    /// The least level that enforces it.
    public var needs: IsolationLevel
    /// The level the job runs at.
    public var level: IsolationLevel

    /// The least level that gives `network`: `none` needs a network namespace.
    public static func least(for network: NetworkMode) -> IsolationLevel { network == .none ? .namespace : .none }

    /// The least level that gives `network` and enforces every limit in `limits` (`cgroup` for `memory_bytes`,
    /// `pids`, `cpu_millis`). A job that names no level runs at least at this one (above the runner's default when
    /// that is weaker): `network: none` asks for `namespace`, a cgroup limit for `cgroup`.
    public static func least(for network: NetworkMode, limits: JobLimits) -> IsolationLevel {
        limits.entries.reduce(least(for: network)) { level, entry in
            max(level, JobLimits.leastLevel[entry.name] ?? level)
        }
    }

    /// The first of `network` and `limits` (in their documented order) that `level` cannot enforce; nil when it
    /// enforces them all.
    public static func first(network: NetworkMode, limits: JobLimits, at level: IsolationLevel) -> IsolationShortfall? {
        if level < least(for: network) {
            return IsolationShortfall(key: JobSpec.Key.network, needs: least(for: network), level: level)
        }
        for (name, _) in limits.entries {
            if let needs = JobLimits.leastLevel[name], level < needs {
                return IsolationShortfall(key: name, needs: needs, level: level)
            }
        }
        return nil
    }

    /// The levels that would do, weakest first.
    public var sufficient: [IsolationLevel] { IsolationLevel.allCases.filter { $0 >= needs } }

    /// As the spec names it: `network "none" needs isolation "namespace" or "cgroup", not "process_group"`.
    public var message: String {
        let subject = key == JobSpec.Key.network ? #"network "none""# : "limits.\(key)"
        let levels = sufficient.map { "\"\($0.rawValue)\"" }.joined(separator: " or ")
        return "\(subject) needs isolation \(levels), not \"\(level.rawValue)\""
    }
}

/// Resource limits a job asks for (`limits` in the spec). Every field is optional; nil means the runner's default.
public struct JobLimits: Sendable, Hashable {
    /// Memory limit of the job's cgroup, bytes (isolation `cgroup`).
    public var memoryBytes: Int?
    /// Process limit of the job's cgroup (isolation `cgroup`); RLIMIT_NPROC is per user and not used for it.
    public var pids: Int?
    /// CPU quota of the job's cgroup in millicores: 500 is half a core (isolation `cgroup`).
    public var cpuMillis: Int?
    /// RLIMIT_CPU, seconds of CPU time.
    public var cpuSeconds: Int?
    /// RLIMIT_NOFILE.
    public var openFiles: Int?
    /// RLIMIT_FSIZE, bytes.
    public var fileSizeBytes: Int?

    public init(
        memoryBytes: Int? = nil, pids: Int? = nil, cpuMillis: Int? = nil, cpuSeconds: Int? = nil,
        openFiles: Int? = nil, fileSizeBytes: Int? = nil
    ) {
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpuMillis = cpuMillis
        self.cpuSeconds = cpuSeconds
        self.openFiles = openFiles
        self.fileSizeBytes = fileSizeBytes
    }

    /// The limits by their JSON names (`Key`); other names are ignored.
    public init(values: [String: Int]) {
        self.init(
            memoryBytes: values[Key.memoryBytes], pids: values[Key.pids], cpuMillis: values[Key.cpuMillis],
            cpuSeconds: values[Key.cpuSeconds], openFiles: values[Key.openFiles],
            fileSizeBytes: values[Key.fileSizeBytes])
    }

    /// JSON field names of `limits`.
    public enum Key {
        public static let memoryBytes = "memory_bytes"
        public static let pids = "pids"
        public static let cpuMillis = "cpu_millis"
        public static let cpuSeconds = "cpu_seconds"
        public static let openFiles = "open_files"
        public static let fileSizeBytes = "file_size_bytes"
        public static let all = [memoryBytes, pids, cpuMillis, cpuSeconds, openFiles, fileSizeBytes]
    }

    /// The least isolation level that enforces each limit: the job's cgroup holds `memory_bytes`, `pids` and
    /// `cpu_millis`; the rlimits (the others) hold at every level.
    public static let leastLevel: [String: IsolationLevel] = [
        Key.memoryBytes: .cgroup, Key.pids: .cgroup, Key.cpuMillis: .cgroup,
    ]

    /// Only the limits that `level` enforces.
    public func enforced(at level: IsolationLevel) -> JobLimits {
        let kept = entries.filter { level >= JobLimits.leastLevel[$0.name] ?? .none }
        return JobLimits(values: Dictionary(uniqueKeysWithValues: kept.map { ($0.name, $0.value) }))
    }

    /// What each limit may be: the kernel refuses values outside these (a cgroup below 1 MiB or a CPU quota below
    /// 10 millicores, more open files than `nr_open`'s default, fewer than stdio needs), so they are refused with
    /// the job instead of failing it after it was claimed.
    public static let accepted: [String: ClosedRange<Int>] = [
        Key.memoryBytes: (1 << 20)...(1 << 50), Key.pids: 1...4_194_304, Key.cpuMillis: 10...1_000_000,
        Key.cpuSeconds: 1...31_536_000, Key.openFiles: 8...1_048_576, Key.fileSizeBytes: 1...(1 << 50),
    ]

    /// The limits as (JSON name, value) pairs, in the documented order, only those set.
    public var entries: [(name: String, value: Int)] {
        let values = [memoryBytes, pids, cpuMillis, cpuSeconds, openFiles, fileSizeBytes]
        return zip(Key.all, values).compactMap { name, value in value.map { (name, $0) } }
    }

    /// Whether no limit is set.
    public var isEmpty: Bool { entries.isEmpty }

    /// Each limit of `self`, or of `defaults` where `self` has none.
    public func merged(over defaults: JobLimits) -> JobLimits {
        JobLimits(
            memoryBytes: memoryBytes ?? defaults.memoryBytes, pids: pids ?? defaults.pids,
            cpuMillis: cpuMillis ?? defaults.cpuMillis, cpuSeconds: cpuSeconds ?? defaults.cpuSeconds,
            openFiles: openFiles ?? defaults.openFiles, fileSizeBytes: fileSizeBytes ?? defaults.fileSizeBytes)
    }

    /// The first limit above its ceiling, as a rejection reason; nil when every limit is within the ceilings.
    public func exceeding(_ ceilings: JobLimits) -> String? {
        let ceiling = Dictionary(uniqueKeysWithValues: ceilings.entries.map { ($0.name, $0.value) })
        for (name, value) in entries {
            if let cap = ceiling[name], value > cap {
                return "limits.\(name) \(value) is above this runner's ceiling of \(cap)"
            }
        }
        return nil
    }

    /// The limits as a JSON object with the spec's names (only those set).
    public var jsonObject: JSONValue {
        .object(Dictionary(uniqueKeysWithValues: entries.map { ($0.name, JSONValue.int($0.value)) }))
    }
}

/// Which of a job's variables are secret: those its spec names in `secret_env`, and every variable whose name ends
/// in `_TOKEN`, `_SECRET` or `_PASSWORD`. Their values are masked as `***` wherever the runner or the CLI shows
/// job output or a spec.
public enum SecretVariables {
    public static let suffixes = ["_TOKEN", "_SECRET", "_PASSWORD"]
    public static let mask = "***"
    /// Shorter values are not masked: masking every "1" or "on" in the output would garble it without hiding
    /// anything.
    public static let minimumMaskedBytes = 4

    public static func isSecret(_ name: String, named: [String]) -> Bool {
        named.contains(name) || suffixes.contains { name.hasSuffix($0) }
    }

    /// A spec as JSON (valid or not: a dead letter's) with the values of its secret `env` variables replaced by `***`.
    public static func masked(json: JSONValue) -> JSONValue {
        guard case .object(var fields) = json, case .object(var environment)? = fields[JobSpec.Key.env] else {
            return json
        }
        var named: [String] = []
        if case .array(let names)? = fields[JobSpec.Key.secretEnv] {
            named = names.compactMap { if case .string(let s) = $0 { s } else { nil } }
        }
        for name in environment.keys where isSecret(name, named: named) { environment[name] = .string(mask) }
        fields[JobSpec.Key.env] = .object(environment)
        return .object(fields)
    }

    /// The spec with the values of its secret variables replaced by `***`.
    public static func masked(_ spec: JobSpec) -> JobSpec {
        var copy = spec
        for name in spec.environment.keys where isSecret(name, named: spec.secretEnvironment) {
            copy.environment[name] = mask
        }
        return copy
    }
}
