/// The commands a control stream entry may carry (field `command`).
public enum ControlCommandName: String, Sendable, CaseIterable {
    /// Stop intake; running jobs finish; the runner stays registered as `drained`.
    case drain
    /// Reopen intake after a drain.
    case resume
    /// Graceful shutdown, as on SIGTERM (`now`: as on a second signal).
    case shutdown
    /// Stop one job (field `job`).
    case cancel
    /// Drain, hand back, release the lease for a runner on `to_node` to take over.
    case migrate
}

/// What a runner did with a control command: `data.outcome` of `runner.command`.
public enum ControlOutcome: String, Sendable, CaseIterable {
    /// Acted on.
    case accepted
    /// Valid but nothing to do (resume of a runner that is not drained, cancel of a job not running here).
    case ignored
    /// Malformed, unknown, or not possible now; `reason` says why.
    case rejected
}

/// One parsed control command.
public enum ControlCommand: Sendable, Equatable {
    case drain
    case resume
    case shutdown(now: Bool)
    case cancel(job: String)
    case migrate(toNode: String, takeoverTimeoutMs: Int)

    /// The default time another runner has to take a migrating runner's id over (10 minutes).
    public static let defaultTakeoverTimeoutMs = 600_000
    /// The longest `takeover_timeout_ms` (10 years, the longest duration the CLI takes): the runner adds it to
    /// Redis's clock for the record's `migrate_deadline`, which a larger one would overflow.
    public static let maximumTakeoverTimeoutMs = 10 * 365 * 24 * 3600 * 1000

    public var name: ControlCommandName {
        switch self {
        case .drain: .drain
        case .resume: .resume
        case .shutdown: .shutdown
        case .cancel: .cancel
        case .migrate: .migrate
        }
    }

    /// The entry's fields for this command (without `sent_by` and `v`).
    public var fields: [(String, String)] {
        var fields = [(ControlField.command, name.rawValue)]
        switch self {
        case .drain, .resume: break
        case .shutdown(let now): fields.append((ControlField.now, now ? "1" : "0"))
        case .cancel(let job): fields.append((ControlField.job, job))
        case .migrate(let node, let timeout):
            fields.append((ControlField.toNode, node))
            fields.append((ControlField.takeoverTimeoutMs, String(timeout)))
        }
        return fields
    }

    /// Parses a control stream entry's fields in the order they came: a field given twice is refused (which of its
    /// values was meant cannot be told), then as `init(fields:)`.
    public init(pairs: [(String, String)]) throws(ControlCommandError) {
        var fields: [String: String] = [:]
        for (name, value) in pairs {
            guard fields[name] == nil else {
                throw ControlCommandError("the entry has the field '\(JobEntry.printable(name))' more than once")
            }
            fields[name] = value
        }
        try self.init(fields: fields)
    }

    /// Parses a control stream entry's fields. The error names what is wrong, in one line.
    public init(fields: [String: String]) throws(ControlCommandError) {
        guard let text = fields[ControlField.command] else {
            throw ControlCommandError("the entry has no '\(ControlField.command)' field")
        }
        guard let name = ControlCommandName(rawValue: text) else {
            let known = ControlCommandName.allCases.map(\.rawValue).joined(separator: ", ")
            throw ControlCommandError("unknown command '\(JobEntry.printable(text))' (known: \(known))")
        }
        switch name {
        case .drain: self = .drain
        case .resume: self = .resume
        case .shutdown:
            switch fields[ControlField.now] ?? "0" {
            case "1", "true": self = .shutdown(now: true)
            case "0", "false", "": self = .shutdown(now: false)
            case let other:
                throw ControlCommandError(
                    "shutdown: '\(ControlField.now)' must be 1 or 0, got '\(JobEntry.printable(other))'")
            }
        case .cancel:
            guard let job = fields[ControlField.job], !job.isEmpty else {
                throw ControlCommandError("cancel: the '\(ControlField.job)' field is missing")
            }
            do {
                try JobEntry.validateId(job)
            } catch {
                throw ControlCommandError("cancel: invalid job id: \(error.message)")
            }
            self = .cancel(job: job)
        case .migrate:
            guard let node = fields[ControlField.toNode], !node.isEmpty else {
                throw ControlCommandError("migrate: the '\(ControlField.toNode)' field is missing")
            }
            guard node.count <= Keyspace.maximumNodeNameLength else {
                throw ControlCommandError(
                    "migrate: '\(ControlField.toNode)' is too long: \(node.count) characters, at most "
                        + "\(Keyspace.maximumNodeNameLength)")
            }
            guard Keyspace.isValidNodeName(node) else {
                throw ControlCommandError(
                    "migrate: '\(ControlField.toNode)' must be a node name without spaces or control characters")
            }
            var timeout = ControlCommand.defaultTakeoverTimeoutMs
            if let text = fields[ControlField.takeoverTimeoutMs] {
                guard let value = Int(text), value > 0 else {
                    throw ControlCommandError(
                        "migrate: '\(ControlField.takeoverTimeoutMs)' must be a positive number of milliseconds, "
                            + "got '\(JobEntry.printable(text))'")
                }
                guard value <= ControlCommand.maximumTakeoverTimeoutMs else {
                    throw ControlCommandError(
                        "migrate: '\(ControlField.takeoverTimeoutMs)' is \(value), more than "
                            + "\(ControlCommand.maximumTakeoverTimeoutMs) (10 years)")
                }
                timeout = value
            }
            self = .migrate(toNode: node, takeoverTimeoutMs: timeout)
        }
    }
}

/// A control stream entry that is not a valid command.
public struct ControlCommandError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
