/// A /proc file could not be read or parsed.
public struct ResourceSampleError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file.
    public var path: String
    /// The errno of the failed read (0 when the content was the problem).
    public var errno: Int32
    /// What failed, e.g. "cannot read /proc/meminfo: No such file or directory".
    public var message: String

    /// The message.
    public var description: String { message }

    static func read(_ path: String, errno err: Int32) -> ResourceSampleError {
        ResourceSampleError(path: path, errno: err, message: "cannot read \(path): \(System.describe(errno: err))")
    }

    static func unexpected(_ path: String, expected: String) -> ResourceSampleError {
        ResourceSampleError(path: path, errno: 0, message: "unexpected content in \(path): expected \(expected)")
    }
}

/// The host's CPU time counters (first line of /proc/stat), in clock ticks since boot.
public struct HostCPUTimes: Sendable, Equatable {
    /// user + nice + system + irq + softirq + steal.
    public var busyTicks: UInt64
    /// idle + iowait.
    public var idleTicks: UInt64

    /// Counters; normally read by `ResourceSampler.hostCPUTimes()`.
    public init(busyTicks: UInt64, idleTicks: UInt64) {
        self.busyTicks = busyTicks
        self.idleTicks = idleTicks
    }

    /// How busy the CPUs were between `earlier` and these counters, 0...100 over all CPUs; nil when no tick passed.
    public func busyPercent(since earlier: HostCPUTimes) -> Double? {
        let busy = Double(busyTicks &- earlier.busyTicks)
        let total = busy + Double(idleTicks &- earlier.idleTicks)
        guard total > 0, busyTicks >= earlier.busyTicks, idleTicks >= earlier.idleTicks else { return nil }
        return busy / total * 100
    }
}

/// /proc/loadavg: runnable (and uninterruptible) tasks averaged over 1, 5 and 15 minutes.
public struct LoadAverage: Sendable, Equatable {
    /// Over the last minute.
    public var oneMinute: Double
    /// Over the last 5 minutes.
    public var fiveMinutes: Double
    /// Over the last 15 minutes.
    public var fifteenMinutes: Double

    /// Load averages; normally read by `ResourceSampler.loadAverage()`.
    public init(oneMinute: Double, fiveMinutes: Double, fifteenMinutes: Double) {
        self.oneMinute = oneMinute
        self.fiveMinutes = fiveMinutes
        self.fifteenMinutes = fifteenMinutes
    }
}

/// /proc/meminfo's MemTotal and MemAvailable.
public struct HostMemory: Sendable, Equatable {
    /// All usable RAM (MemTotal).
    public var totalBytes: UInt64
    /// What can be given to new work without swapping (the kernel's estimate).
    public var availableBytes: UInt64

    /// Memory figures; normally read by `ResourceSampler.memory()`.
    public init(totalBytes: UInt64, availableBytes: UInt64) {
        self.totalBytes = totalBytes
        self.availableBytes = availableBytes
    }

    /// Total minus available.
    public var usedBytes: UInt64 { totalBytes > availableBytes ? totalBytes - availableBytes : 0 }
}

/// statvfs of a path: the space of the filesystem it is on.
public struct DiskSpace: Sendable, Equatable {
    /// Free to an unprivileged user (f_bavail).
    public var availableBytes: UInt64
    /// The filesystem's size (f_blocks).
    public var totalBytes: UInt64
}

/// Which processes make up a job when there is no cgroup to ask.
public enum ProcessSelection: Sendable, Equatable {
    /// Every process whose session id is this (a job runs in its own session).
    case session(Int32)
    /// Every process in this process group.
    case processGroup(Int32)
    /// These processes.
    case pids([Int32])
}

/// The CPU time and memory of a set of processes at one moment, from /proc/<pid>/stat and statm.
public struct ProcessTreeUsage: Sendable, Equatable {
    /// The processes that were found (zombies included: their CPU time still counts).
    public var pids: [Int32]
    /// utime + cutime: user time of the processes and of the children they have waited for.
    public var userCPUTime: Duration
    /// stime + cstime: the same in kernel mode.
    public var systemCPUTime: Duration
    /// The sum of their resident set sizes (statm). Pages shared between them count once per process.
    public var residentBytes: UInt64

    /// Usage; normally read by `ResourceSampler.treeUsage(_:)`.
    public init(pids: [Int32], userCPUTime: Duration, systemCPUTime: Duration, residentBytes: UInt64) {
        self.pids = pids
        self.userCPUTime = userCPUTime
        self.systemCPUTime = systemCPUTime
        self.residentBytes = residentBytes
    }
}

/// The largest resident size seen over repeated samples of a job's processes: the job's peak memory where no cgroup
/// counts it (a short spike between two samples is missed).
public struct PeakResidentTracker: Sendable, Equatable {
    /// The largest `residentBytes` recorded so far.
    public private(set) var peakBytes: UInt64 = 0

    /// An empty tracker.
    public init() {}

    /// Keeps the larger of the peak so far and this sample.
    public mutating func record(_ usage: ProcessTreeUsage) {
        peakBytes = max(peakBytes, usage.residentBytes)
    }
}

/// Reads the host's and processes' resource figures from /proc (or a fake /proc below `procRoot` in tests) and
/// statvfs. Every method reads files once and keeps no state: sample twice to get a rate.
public struct ResourceSampler: Sendable {
    /// Where /proc is.
    public var procRoot: String

    private let ticksPerSecond = System.clockTicksPerSecond()
    private let pageSize = UInt64(System.pageSize())

    /// A sampler of the host's /proc, or of the files below `procRoot`.
    public init(procRoot: String = "/proc") {
        self.procRoot = procRoot
    }

    /// The first line of /proc/stat: `cpu user nice system idle iowait irq softirq steal ...`.
    public func hostCPUTimes() throws(ResourceSampleError) -> HostCPUTimes {
        let path = joinPath(procRoot, "stat")
        let text = try read(path)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else {
            throw .unexpected(path, expected: "a 'cpu ' line")
        }
        let ticks = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
        guard ticks.count >= 4 else { throw .unexpected(path, expected: "at least 4 counters on the 'cpu' line") }
        func tick(_ index: Int) -> UInt64 { index < ticks.count ? ticks[index] : 0 }
        return HostCPUTimes(
            busyTicks: tick(0) + tick(1) + tick(2) + tick(5) + tick(6) + tick(7), idleTicks: tick(3) + tick(4))
    }

    /// /proc/loadavg.
    public func loadAverage() throws(ResourceSampleError) -> LoadAverage {
        let path = joinPath(procRoot, "loadavg")
        let fields = try read(path).split(separator: " ").prefix(3).compactMap { Double($0) }
        guard fields.count == 3 else { throw .unexpected(path, expected: "three load averages") }
        return LoadAverage(oneMinute: fields[0], fiveMinutes: fields[1], fifteenMinutes: fields[2])
    }

    /// MemTotal and MemAvailable of /proc/meminfo.
    public func memory() throws(ResourceSampleError) -> HostMemory {
        let path = joinPath(procRoot, "meminfo")
        var values: [String: UInt64] = [:]
        Self.kibibyteLines(try readBytes(path)) { name, value in
            values[String(decoding: name, as: UTF8.self)] = value
        }
        guard let total = values["MemTotal"], let available = values["MemAvailable"] else {
            throw .unexpected(path, expected: "MemTotal and MemAvailable")
        }
        return HostMemory(totalBytes: total, availableBytes: available)
    }

    /// statvfs of `path` (a real path, not below `procRoot`).
    public func diskSpace(of path: String) throws(ResourceSampleError) -> DiskSpace {
        switch System.fileSystemSpace(path) {
        case .success(let space): return DiskSpace(availableBytes: space.available, totalBytes: space.total)
        case .failure(let err): throw .read(path, errno: err.value)
        }
    }

    /// The processes of `selection` and what they use now. A process that exits while it is read is left out.
    public func treeUsage(_ selection: ProcessSelection) -> ProcessTreeUsage {
        let candidates: [Int32]
        switch selection {
        case .pids(let pids): candidates = pids
        case .session, .processGroup: candidates = System.numericDirectoryEntries(procRoot).sorted()
        }
        var usage = ProcessTreeUsage(pids: [], userCPUTime: .zero, systemCPUTime: .zero, residentBytes: 0)
        for pid in candidates {
            guard let stat = processStat(pid) else { continue }
            switch selection {
            case .session(let session) where stat.session != session: continue
            case .processGroup(let group) where stat.group != group: continue
            default: break
            }
            usage.pids.append(pid)
            usage.userCPUTime += ticks(stat.userTicks + stat.waitedChildrenUserTicks)
            usage.systemCPUTime += ticks(stat.systemTicks + stat.waitedChildrenSystemTicks)
            usage.residentBytes += residentBytes(of: pid) ?? 0
        }
        return usage
    }

    /// VmHWM of /proc/<pid>/status: the process's own peak resident size, nil when it is gone (or a kernel thread).
    public func peakResidentBytes(of pid: Int32) -> UInt64? {
        guard let bytes = try? readBytes(joinPath(procRoot, "\(pid)/status")) else { return nil }
        return Self.kibibyteField("VmHWM", in: bytes)
    }

    /// The value of the `name:` line of `kibibyteLines`, found among the bytes without making a String of each line:
    /// a status file is read once per job.
    private static func kibibyteField(_ name: String, in bytes: [UInt8]) -> UInt64? {
        let key = Array(name.utf8)
        var found: UInt64?
        kibibyteLines(bytes) { lineName, value in
            if lineName.elementsEqual(key) { found = value }
        }
        return found
    }

    /// Each `Name:  <number> [kB]` line (meminfo; status separates with tabs): the name's bytes and the figure, in
    /// bytes when given in kB, in file order. A line of another shape, or whose figure does not fit in 64 bits, is
    /// passed over.
    private static func kibibyteLines(_ bytes: [UInt8], _ body: (ArraySlice<UInt8>, UInt64) -> Void) {
        func isBlank(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        var lineStart = 0
        while lineStart < bytes.count {
            let lineEnd = bytes[lineStart...].firstIndex(of: UInt8(ascii: "\n")) ?? bytes.count
            defer { lineStart = lineEnd + 1 }
            guard let colon = bytes[lineStart..<lineEnd].firstIndex(of: UInt8(ascii: ":")) else { continue }
            var index = colon + 1
            while index < lineEnd, isBlank(bytes[index]) { index += 1 }
            var number: UInt64 = 0
            let digitsStart = index
            var overflowed = false
            while index < lineEnd, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
                let (times10, o1) = number.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(UInt64(bytes[index] - UInt8(ascii: "0")))
                overflowed = overflowed || o1 || o2
                number = sum
                index += 1
            }
            guard index > digitsStart, !overflowed, index == lineEnd || isBlank(bytes[index]) else { continue }
            while index < lineEnd, isBlank(bytes[index]) { index += 1 }
            var unitEnd = index
            while unitEnd < lineEnd, !isBlank(bytes[unitEnd]) { unitEnd += 1 }
            let name = bytes[lineStart..<colon]
            guard bytes[index..<unitEnd].elementsEqual("kB".utf8) else {
                body(name, number)
                continue
            }
            let (scaled, tooLarge) = number.multipliedReportingOverflow(by: 1024)
            if !tooLarge { body(name, scaled) }
        }
    }

    /// The fields of /proc/<pid>/stat the sampler uses.
    struct ProcessStat: Equatable {
        var state: Character
        var group: Int32
        var session: Int32
        var userTicks: UInt64
        var systemTicks: UInt64
        var waitedChildrenUserTicks: UInt64
        var waitedChildrenSystemTicks: UInt64
    }

    /// /proc/<pid>/stat: `pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    /// stime cutime cstime ...`; comm may hold spaces and parentheses, so the fields are counted after the last ")".
    func processStat(_ pid: Int32) -> ProcessStat? {
        guard let text = try? read(joinPath(procRoot, "\(pid)/stat")), let close = text.lastIndex(of: ")") else {
            return nil
        }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count >= 15, let state = fields[0].first, let group = Int32(fields[2]),
            let session = Int32(fields[3]), let utime = UInt64(fields[11]), let stime = UInt64(fields[12]),
            let cutime = Int64(fields[13]), let cstime = Int64(fields[14])
        else { return nil }
        return ProcessStat(
            state: state, group: group, session: session, userTicks: utime, systemTicks: stime,
            waitedChildrenUserTicks: UInt64(max(0, cutime)), waitedChildrenSystemTicks: UInt64(max(0, cstime)))
    }

    /// The second field of /proc/<pid>/statm (resident pages) in bytes.
    private func residentBytes(of pid: Int32) -> UInt64? {
        guard let text = try? read(joinPath(procRoot, "\(pid)/statm")) else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count >= 2, let pages = UInt64(fields[1].trimmingWhitespace) else { return nil }
        return pages * pageSize
    }

    private func ticks(_ count: UInt64) -> Duration {
        .nanoseconds(Int64(clamping: count) * (1_000_000_000 / ticksPerSecond))
    }

    private func read(_ path: String) throws(ResourceSampleError) -> String {
        String(decoding: try readBytes(path), as: UTF8.self)
    }

    private func readBytes(_ path: String) throws(ResourceSampleError) -> [UInt8] {
        switch System.readWholeFile(path) {
        case .success(let bytes): return bytes
        case .failure(let err): throw .read(path, errno: err.value)
        }
    }
}
