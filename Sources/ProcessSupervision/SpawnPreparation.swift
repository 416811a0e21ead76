import CRunnerShims
import Glibc

/// A NULL-terminated array of C strings, copied (strdup) for the life of the object: what execve needs, allocated
/// in the parent so that the child allocates nothing.
final class CStringArray {
    let pointers: [UnsafeMutablePointer<CChar>?]
    /// The NULL-terminated array itself, in memory of its own (an Array's buffer address is not stable).
    let base: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>

    /// nil when strdup fails (ENOMEM).
    init?(_ strings: [String]) {
        var copies: [UnsafeMutablePointer<CChar>?] = []
        copies.reserveCapacity(strings.count + 1)
        for string in strings {
            guard let copy = strdup(string) else {
                copies.forEach { free($0) }
                return nil
            }
            copies.append(copy)
        }
        copies.append(nil)
        pointers = copies
        base = .allocate(capacity: copies.count)
        base.initialize(from: copies, count: copies.count)
    }

    deinit {
        base.deallocate()
        for pointer in pointers {
            free(pointer)
        }
    }
}

/// Turns a `ProcessSpec` into what `nr_spawn` needs, or the SpawnError that makes a fork pointless.
struct SpawnPreparation {
    var path: String
    var arguments: [String]
    var environment: [String]

    init(_ spec: ProcessSpec) throws(SpawnError) {
        let arguments = spec.arguments.isEmpty ? [spec.executable] : spec.arguments
        for (index, argument) in arguments.enumerated() where argument.holdsByte(0) {
            throw SpawnError.invalidArgument(spec, "argument \(index) contains a NUL byte")
        }
        var variables = spec.environment
        if let marker = spec.treeMarker {
            if let value = variables[marker.name], value != marker.value {
                throw SpawnError.invalidArgument(
                    spec, "the environment sets the tree marker '\(marker.name)' to another value")
            }
            variables[marker.name] = marker.value
        }
        var environment: [String] = []
        environment.reserveCapacity(variables.count)
        // Sorted, so that a job sees the same environment order every time.
        for (key, value) in variables.sorted(by: { $0.key < $1.key }) {
            if key.isEmpty || key.holdsByte(UInt8(ascii: "=")) || key.holdsByte(0) || value.holdsByte(0) {
                throw SpawnError.invalidArgument(spec, "invalid environment variable name or value for '\(key)'")
            }
            environment.append(key + "=" + value)
        }
        if let directory = spec.workingDirectory, directory.isEmpty || directory.holdsByte(0) {
            throw SpawnError.invalidArgument(spec, "invalid working directory '\(directory)'")
        }
        if spec.executable.holdsByte(0) {
            throw SpawnError.invalidArgument(spec, "the executable name contains a NUL byte")
        }
        try Self.validate(spec.isolation, of: spec)
        self.path = try Self.resolve(spec)
        self.arguments = arguments
        self.environment = environment
    }

    /// What the kernel would reject less clearly, or what would quietly give the job less than it asked for.
    static func validate(_ isolation: ProcessIsolation, of spec: ProcessSpec) throws(SpawnError) {
        if isolation.level != .namespace {
            if isolation.namespaces.isolatesNetwork {
                throw SpawnError.invalidArgument(spec, "an isolated network needs the namespace isolation level")
            }
            if isolation.hostname != nil {
                throw SpawnError.invalidArgument(spec, "a hostname needs the namespace isolation level")
            }
        }
        if let hostname = isolation.hostname, hostname.isEmpty || hostname.holdsByte(0) {
            throw SpawnError.invalidArgument(spec, "invalid hostname '\(hostname)'")
        }
        var kinds: [ResourceLimit.Kind] = []
        for limit in isolation.resourceLimits {
            if kinds.contains(limit.kind) {
                throw SpawnError.invalidArgument(spec, "\(limit.kind) is given twice")
            }
            kinds.append(limit.kind)
            if let hard = limit.hard, (limit.soft ?? .max) > hard {
                throw SpawnError.invalidArgument(spec, "\(limit.kind): the soft limit is above the hard limit")
            }
        }
        // (uid_t)-1 means "leave unchanged" to setresuid.
        if let credentials = isolation.credentials, credentials.uid == .max || credentials.gid == .max {
            throw SpawnError.invalidArgument(spec, "uid and gid 4294967295 are not valid credentials")
        }
        if isolation.cgroupProcsFiles.count > Int(NR_MAX_CGROUPS) {
            throw SpawnError.invalidArgument(spec, "more than \(NR_MAX_CGROUPS) cgroup.procs files")
        }
        for file in isolation.cgroupProcsFiles where !file.hasPrefix("/") || file.holdsByte(0) {
            throw SpawnError.invalidArgument(spec, "the cgroup.procs path '\(file)' is not absolute")
        }
    }

    /// A name with a slash is used as is (execve resolves a relative one in the child's working directory). A bare
    /// name is looked up in the job's PATH, like execvp: the first executable regular file wins; failing that, the
    /// first file found (execve then reports why it cannot run); failing that, not found.
    static func resolve(_ spec: ProcessSpec) throws(SpawnError) -> String {
        let name = spec.executable
        guard !name.isEmpty else { throw SpawnError.notFound(spec) }
        if name.holdsByte(UInt8(ascii: "/")) {
            return name
        }
        let searchPath = spec.environment["PATH"] ?? ProcessSpec.defaultSearchPath
        var firstFound: String?
        for directory in searchPath.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = directory.isEmpty ? "./\(name)" : "\(directory)/\(name)"
            // A relative PATH entry means relative to where the child will run.
            let probe: String
            if let workingDirectory = spec.workingDirectory, !candidate.hasPrefix("/") {
                probe = "\(workingDirectory)/\(candidate)"
            } else {
                probe = candidate
            }
            guard let status = System.executableStatus(probe) else { continue }
            if status.isExecutable {
                return candidate
            }
            if firstFound == nil, status.isRegularFile {
                firstFound = candidate
            }
        }
        if let firstFound {
            return firstFound
        }
        throw SpawnError.notFound(spec)
    }
}

/// The C memory of one `nr_spawn` call, allocated before the clone so that the child allocates nothing; freed with
/// the object. Keep it alive (withExtendedLifetime) until `nr_spawn` returns.
final class SpawnArguments {
    private let path: CStringArray
    private let argv: CStringArray
    private let envp: CStringArray
    private let cwd: CStringArray
    private let hostname: CStringArray
    private let cgroupFiles: CStringArray
    private let rlimits: UnsafeMutableBufferPointer<nr_rlimit>
    private let isolation: ProcessIsolation
    private let dieWithParent: Bool

    /// nil when strdup fails (ENOMEM).
    init?(_ prepared: SpawnPreparation, spec: ProcessSpec) {
        let isolation = spec.isolation
        guard let path = CStringArray([prepared.path]),
            let argv = CStringArray(prepared.arguments),
            let envp = CStringArray(prepared.environment),
            let cwd = CStringArray(spec.workingDirectory.map { [$0] } ?? []),
            let hostname = CStringArray(isolation.hostname.map { [$0] } ?? []),
            let cgroupFiles = CStringArray(isolation.cgroupProcsFiles)
        else { return nil }
        self.path = path
        self.argv = argv
        self.envp = envp
        self.cwd = cwd
        self.hostname = hostname
        self.cgroupFiles = cgroupFiles
        self.isolation = isolation
        self.dieWithParent = spec.dieWithParent
        rlimits = .allocate(capacity: max(isolation.resourceLimits.count, 1))
        for (index, limit) in isolation.resourceLimits.enumerated() {
            rlimits[index] = nr_rlimit(
                kind: Int32(limit.kind.cValue.rawValue),
                soft: limit.soft ?? .max,  // NR_LIMIT_UNLIMITED (a macro Swift cannot import)
                hard: limit.hard ?? .max
            )
        }
    }

    deinit {
        rlimits.deallocate()
    }

    /// The configuration for `nr_spawn`; its pointers are valid while this object lives.
    func config(stdin: Int32, stdout: Int32, stderr: Int32, probeOnly: Bool = false) -> nr_spawn_config {
        let level = isolation.level
        return nr_spawn_config(
            path: path.pointers[0],
            argv: argv.base,
            envp: envp.base,
            cwd: cwd.pointers[0],
            stdin_fd: stdin,
            stdout_fd: stdout,
            stderr_fd: stderr,
            die_with_parent: dieWithParent ? 1 : 0,
            new_session: level == .none ? 0 : 1,
            new_namespaces: level == .namespace ? 1 : 0,
            new_network: level == .namespace && isolation.namespaces.isolatesNetwork ? 1 : 0,
            hostname: hostname.pointers[0],
            hostname_length: Int32(isolation.hostname?.utf8.count ?? 0),
            rlimits: UnsafePointer(rlimits.baseAddress),
            rlimit_count: Int32(isolation.resourceLimits.count),
            set_credentials: isolation.credentials == nil ? 0 : 1,
            uid: isolation.credentials?.uid ?? 0,
            gid: isolation.credentials?.gid ?? 0,
            no_new_privs: isolation.noNewPrivileges ? 1 : 0,
            drop_capabilities: isolation.dropsCapabilities ? 1 : 0,
            cgroup_procs_paths: UnsafeRawPointer(cgroupFiles.base).assumingMemoryBound(
                to: UnsafePointer<CChar>?.self),
            cgroup_count: Int32(isolation.cgroupProcsFiles.count),
            probe_only: probeOnly ? 1 : 0
        )
    }
}

extension ResourceLimit.Kind {
    var cValue: nr_limit_kind {
        switch self {
        case .cpuSeconds: NR_LIMIT_CPU_SECONDS
        case .addressSpace: NR_LIMIT_ADDRESS_SPACE
        case .openFiles: NR_LIMIT_OPEN_FILES
        case .fileSize: NR_LIMIT_FILE_SIZE
        case .processes: NR_LIMIT_PROCESSES
        case .coreSize: NR_LIMIT_CORE_SIZE
        }
    }
}

extension String {
    /// Whether the UTF-8 form holds `byte`, by `memchr` where the storage is contiguous: `utf8.contains` went byte by
    /// byte through the view, a few dozen times per job for its environment.
    func holdsByte(_ byte: UInt8) -> Bool {
        let found = utf8.withContiguousStorageIfAvailable { bytes in
            guard let base = bytes.baseAddress, !bytes.isEmpty else { return false }
            return memchr(base, Int32(byte), bytes.count) != nil
        }
        return found ?? utf8.contains(byte)
    }
}
