/// A cgroup v1 hierarchy: one mount carrying one or more controllers (cpu and cpuacct are often co-mounted).
public struct CgroupV1Hierarchy: Sendable, Equatable {
    /// The controllers bound to it, as /proc/self/cgroup names them ("memory", "cpu", "cpuacct").
    public var controllers: [String]
    /// Where it is mounted, e.g. /sys/fs/cgroup/memory.
    public var mountPoint: String
    /// The directory of the runner's own cgroup in it, e.g. /sys/fs/cgroup/memory/system.slice/runner.service.
    public var ownDirectory: String

    /// A hierarchy; normally found by `CgroupHierarchy.detect`.
    public init(controllers: [String], mountPoint: String, ownDirectory: String) {
        self.controllers = controllers
        self.mountPoint = mountPoint
        self.ownDirectory = ownDirectory
    }
}

/// The cgroup v2 (unified) hierarchy.
public struct CgroupV2Hierarchy: Sendable, Equatable {
    /// Where it is mounted, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified.
    public var mountPoint: String
    /// The directory of the runner's own cgroup in it.
    public var ownDirectory: String
    /// The controllers the runner's own cgroup can hand to its children (its cgroup.controllers).
    public var availableControllers: [String]

    /// A hierarchy; normally found by `CgroupHierarchy.detect`.
    public init(mountPoint: String, ownDirectory: String, availableControllers: [String]) {
        self.mountPoint = mountPoint
        self.ownDirectory = ownDirectory
        self.availableControllers = availableControllers
    }
}

/// Which cgroup layout the host has, from /proc/self/mountinfo and /proc/self/cgroup.
public enum CgroupHierarchy: Sendable, Equatable, CustomStringConvertible {
    /// Only cgroup v2.
    case unified(CgroupV2Hierarchy)
    /// Only cgroup v1 controller hierarchies.
    case legacy([CgroupV1Hierarchy])
    /// v1 controller hierarchies and a cgroup2 mount too (systemd's "hybrid": the controllers mostly stay on v1).
    case hybrid(legacy: [CgroupV1Hierarchy], unified: CgroupV2Hierarchy)

    /// Reads `/proc/self/mountinfo` and `/proc/self/cgroup` (and the v2 own cgroup's cgroup.controllers) through
    /// `fileSystem`. Named v1 hierarchies without controllers (name=systemd) are left out, and so is a hierarchy in
    /// which the runner's own cgroup is not visible (its cgroup lies outside the mount's root). Throws `.notMounted`
    /// when no usable hierarchy remains.
    public static func detect(
        fileSystem: any CgroupFileSystem = LiveCgroupFileSystem()
    ) throws(CgroupError) -> CgroupHierarchy {
        let mounts = parseMountInfo(try fileSystem.readFile("/proc/self/mountinfo"))
        let memberships = parseProcCgroup(try fileSystem.readFile("/proc/self/cgroup"))
        var legacy: [CgroupV1Hierarchy] = []
        var unified: CgroupV2Hierarchy?
        for membership in memberships {
            if membership.controllers.isEmpty {
                guard unified == nil, let mount = mounts.first(where: { $0.fileSystemType == "cgroup2" }),
                    let own = mount.directory(of: membership.path)
                else { continue }
                let available = try fileSystem.readWords(joinPath(own, "cgroup.controllers"))
                unified = CgroupV2Hierarchy(
                    mountPoint: mount.mountPoint, ownDirectory: own, availableControllers: available)
            } else {
                let controllers = membership.controllers.filter { !$0.hasPrefix("name=") }
                guard !controllers.isEmpty,
                    let mount = mounts.first(where: {
                        $0.fileSystemType == "cgroup" && Set(membership.controllers).isSubset(of: $0.superOptions)
                    }),
                    let own = mount.directory(of: membership.path)
                else { continue }
                legacy.append(
                    CgroupV1Hierarchy(controllers: controllers, mountPoint: mount.mountPoint, ownDirectory: own))
            }
        }
        switch (legacy.isEmpty, unified) {
        case (true, let unified?): return .unified(unified)
        case (false, let unified?): return .hybrid(legacy: legacy, unified: unified)
        case (false, nil): return .legacy(legacy)
        case (true, nil):
            throw CgroupError(
                code: .notMounted, path: "/proc/self/mountinfo",
                message: "no usable cgroup hierarchy: neither cgroup2 nor a v1 controller is mounted where the "
                    + "runner's own cgroup (/proc/self/cgroup) is visible")
        }
    }

    /// One line for the log, e.g. "cgroup hybrid: v1 memory at /sys/fs/cgroup/memory/x, ...; cgroup2 at
    /// /sys/fs/cgroup/unified (controllers: none); jobs use the v1 driver".
    public var description: String {
        func describe(_ legacy: [CgroupV1Hierarchy]) -> String {
            legacy.map { "\($0.controllers.joined(separator: ",")) at \($0.ownDirectory)" }.joined(separator: ", ")
        }
        func describe(_ unified: CgroupV2Hierarchy) -> String {
            let controllers =
                unified.availableControllers.isEmpty
                ? "none" : unified.availableControllers.joined(separator: " ")
            return "cgroup2 at \(unified.mountPoint), own cgroup \(unified.ownDirectory) (controllers: \(controllers))"
        }
        let layout: String
        switch self {
        case .unified(let unified): layout = "cgroup v2 (unified): " + describe(unified)
        case .legacy(let legacy): layout = "cgroup v1 (legacy): " + describe(legacy)
        case .hybrid(let legacy, let unified):
            layout = "cgroup hybrid: v1 " + describe(legacy) + "; " + describe(unified)
        }
        return layout + "; jobs use the \(preferredVersion.rawValue) driver"
    }

    /// The short line a worker logs at info (the `description` goes to debug), e.g. "cgroups: v1 (hybrid); jobs use
    /// the v1 driver".
    public var summary: String {
        let layout: String
        switch self {
        case .unified: layout = "v2 (unified)"
        case .legacy: layout = "v1 (legacy)"
        case .hybrid: layout = "v1 (hybrid)"
        }
        return "cgroups: \(layout); jobs use the \(preferredVersion.rawValue) driver"
    }

    /// The driver this host's layout calls for: v2 when unified; v1 when legacy; on a hybrid host v1 when the memory
    /// controller is on v1 (the usual case), else v2.
    public var preferredVersion: CgroupVersion {
        switch self {
        case .unified: .v2
        case .legacy: .v1
        case .hybrid(let legacy, _): legacy.contains { $0.controllers.contains("memory") } ? .v1 : .v2
        }
    }

    /// The driver of `preferredVersion` for job cgroups under `parent`.
    public func makeDriver(
        parent: CgroupParent, fileSystem: any CgroupFileSystem = LiveCgroupFileSystem()
    ) -> any CgroupDriver {
        switch self {
        case .unified(let unified): CgroupV2Driver(hierarchy: unified, parent: parent, fileSystem: fileSystem)
        case .legacy(let legacy): CgroupV1Driver(hierarchies: legacy, parent: parent, fileSystem: fileSystem)
        case .hybrid(let legacy, let unified):
            preferredVersion == .v1
                ? CgroupV1Driver(hierarchies: legacy, parent: parent, fileSystem: fileSystem)
                : CgroupV2Driver(hierarchy: unified, parent: parent, fileSystem: fileSystem)
        }
    }
}

/// One line of /proc/self/mountinfo that matters here.
struct MountInfoEntry: Equatable {
    /// The mount's root within its filesystem (field 4): for cgroupfs, the cgroup the mount shows.
    var root: String
    var mountPoint: String
    var fileSystemType: String
    var superOptions: Set<String>

    /// The directory of cgroup `path` (from /proc/self/cgroup) in this mount, nil when it is outside the mount's root.
    func directory(of path: String) -> String? {
        if root == "/" { return joinPath(mountPoint, path) }
        if path == root { return mountPoint }
        guard path.hasPrefix(root + "/") else { return nil }
        return joinPath(mountPoint, String(path.dropFirst(root.count)))
    }
}

/// The cgroup and cgroup2 mounts of /proc/self/mountinfo:
/// `id parent major:minor root mountpoint options [optional...] - fstype source superoptions`.
func parseMountInfo(_ text: String) -> [MountInfoEntry] {
    var entries: [MountInfoEntry] = []
    for line in text.split(separator: "\n") {
        let fields = line.split(separator: " ").map(String.init)
        guard let separator = fields.firstIndex(of: "-"), separator >= 6, fields.count >= separator + 4 else {
            continue
        }
        let type = fields[separator + 1]
        guard type == "cgroup" || type == "cgroup2" else { continue }
        entries.append(
            MountInfoEntry(
                root: unescapeMountField(fields[3]), mountPoint: unescapeMountField(fields[4]), fileSystemType: type,
                superOptions: Set(fields[separator + 3].split(separator: ",").map(String.init))))
    }
    return entries
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
func unescapeMountField(_ field: String) -> String {
    guard field.contains("\\") else { return field }
    var bytes: [UInt8] = []
    let utf8 = Array(field.utf8)
    var index = 0
    while index < utf8.count {
        if utf8[index] == UInt8(ascii: "\\"), index + 3 < utf8.count,
            let value = UInt8(String(decoding: utf8[(index + 1)...(index + 3)], as: UTF8.self), radix: 8)
        {
            bytes.append(value)
            index += 4
        } else {
            bytes.append(utf8[index])
            index += 1
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// One line of /proc/self/cgroup: `hierarchy-id:controllers:path` (v2: `0::path`).
struct CgroupMembership: Equatable {
    var controllers: [String]
    var path: String
}

func parseProcCgroup(_ text: String) -> [CgroupMembership] {
    text.split(separator: "\n").compactMap { line in
        let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        let controllers = parts[1].split(separator: ",").map(String.init)
        return CgroupMembership(controllers: controllers, path: String(parts[2]))
    }
}
