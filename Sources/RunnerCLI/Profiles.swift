import RunnerCore
import RunnerProtocol

/// A named set of defaults for the worker's options (`--profile`): the layer above the built-in defaults and below
/// the config file, the environment and the flags. Values are written as on the command line.
struct Profile: Sendable {
    var name: String
    /// Option (`--name`) and value, in the order documented in docs/operations.md.
    var values: [(option: String, value: String)]
    /// What the profile could not give on this host, to be logged when the worker starts.
    var warnings: [String] = []

    static let names = ["development", "production", "high-performance"]

    /// The profile called `name` on a host with `host`'s facts; nil for an unknown name.
    static func named(_ name: String, host: HostFacts) -> Profile? {
        switch name {
        case "development":
            // Quick to notice a lost runner and to stop, every step in the log, no isolation to set up.
            return Profile(
                name: name,
                values: [
                    ("--isolation", IsolationLevel.processGroup.rawValue), ("--lease-ttl", "5s"),
                    ("--shutdown-timeout", "5s"), ("--kill-grace", "1s"), ("--log-level", "debug"),
                    ("--log-format", "text"),
                ])
        case "production":
            var warnings: [String] = []
            if host.strongestIsolation < .cgroup {
                warnings.append(
                    "profile production: cgroup isolation is not available here ("
                        + (host.cgroupShortfall ?? "unknown reason") + "); jobs run at "
                        + "\(host.strongestIsolation.rawValue) by default")
            }
            var values: [(String, String)] = [("--isolation", host.strongestIsolation.rawValue)]
            // A single job may not take more than three quarters of the host's memory.
            if let memory = host.memoryBytes, memory >= 4 << 20 {
                values.append(("--max-memory", "\((memory / 4 * 3) >> 20)M"))
            }
            values += [
                ("--max-pids", "4096"), ("--shutdown-timeout", "5m"), ("--kill-grace", "10s"),
                ("--log-level", "info"), ("--log-format", "json"),
            ]
            return Profile(name: name, values: values, warnings: warnings)
        case "high-performance":
            // The intake already reads as many jobs as there are free slots in one XREADGROUP, and results are
            // written in one script call each: more slots and less monitoring and logging are the knobs there are.
            return Profile(
                name: name,
                values: [
                    ("--concurrency", String(min(2 * host.processors, WorkerConfiguration.maximumConcurrency))),
                    ("--monitor-interval", "60s"),
                    ("--reaper-interval", "10s"), ("--log-level", "warning"),
                ])
        default:
            return nil
        }
    }

}
