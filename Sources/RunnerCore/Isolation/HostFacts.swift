import Foundation
import ProcessSupervision
import RunnerProtocol

/// What a profile needs to know about the host to pick its defaults: processors, memory, and the strongest isolation
/// level jobs can get here. Found without side effects (no cgroup is made), so `config --print` may ask too.
public struct HostFacts: Sendable, Equatable {
    public var processors: Int
    /// Total memory; nil when /proc/meminfo could not be read.
    public var memoryBytes: UInt64?
    public var strongestIsolation: IsolationLevel
    /// Why `cgroup` is not the strongest level; nil when it is.
    public var cgroupShortfall: String?

    public init(processors: Int, memoryBytes: UInt64?, strongestIsolation: IsolationLevel, cgroupShortfall: String?) {
        self.processors = processors
        self.memoryBytes = memoryBytes
        self.strongestIsolation = strongestIsolation
        self.cgroupShortfall = cgroupShortfall
    }

    /// Probes this host: the kernel's isolation features (`IsolationCapabilities.probe`, a few probe children) and
    /// the cgroup layout with the controllers jobs need. The worker's own start-up check (`IsolationHost.start`)
    /// also makes its cgroup parent, which can still fail where this says cgroups are there.
    public static func survey() async -> HostFacts {
        let capabilities = await IsolationCapabilities.probe()
        var shortfall: String?
        do {
            let hierarchy = try CgroupHierarchy.detect()
            let controllers: [String]
            switch (hierarchy, hierarchy.preferredVersion) {
            case (.unified(let unified), _), (.hybrid(_, let unified), .v2): controllers = unified.availableControllers
            case (.legacy(let legacy), _), (.hybrid(let legacy, _), _): controllers = legacy.flatMap(\.controllers)
            }
            let missing = ["memory", "pids", "cpu"].filter { !controllers.contains($0) }
            if !missing.isEmpty {
                shortfall = "the cgroup controllers \(missing.joined(separator: ", ")) are not available"
            }
        } catch {
            shortfall = error.message
        }
        let level: IsolationLevel
        if let reason = capabilities.namespaces.reason {
            shortfall = shortfall ?? "namespace isolation is not available: \(reason)"
            level = capabilities.processGroup.isAvailable ? .processGroup : .none
        } else {
            level = shortfall == nil ? .cgroup : .namespace
        }
        return HostFacts(
            processors: max(1, ProcessInfo.processInfo.activeProcessorCount),
            memoryBytes: try? ResourceSampler().memory().totalBytes, strongestIsolation: level,
            cgroupShortfall: shortfall)
    }
}
