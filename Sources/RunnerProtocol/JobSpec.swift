/// What to run, as carried in the `spec` field of a job entry (JSON).
///
/// Unknown fields are ignored so that newer control planes can add fields; a known field of the wrong type is a
/// rejection, never a guess.
public struct JobSpec: Sendable, Hashable {
    /// How the command is given.
    public enum Command: Sendable, Hashable {
        /// Executed directly; `argv[0]` is looked up in `PATH` when it has no slash.
        case argv([String])
        /// Run as `/bin/sh -c <script>`.
        case shell(String)
    }

    public var command: Command
    public var environment: [String: String]
    public var workingDirectory: String?
    /// Milliseconds; nil means the runner's default.
    public var timeoutMs: Int?
    /// How many attempts the job may take (at least 1).
    public var maxAttempts: Int
    public var labels: [String: String]
    /// The delay before a retry; nil means the defaults of `Backoff`.
    public var backoff: Backoff?

    /// The isolation asked for; nil means the runner's default.
    public var isolation: IsolationLevel?
    /// The network asked for; nil means `host`.
    public var network: NetworkMode?
    public var limits: JobLimits
    /// Names of variables in `env` whose values are masked in the job's log and output tail.
    public var secretEnvironment: [String]
    /// Labels a runner must have to run this job (key to value); empty: any runner of the queue.
    public var requires: LabelSet = LabelSet()

    public init(
        command: Command, environment: [String: String] = [:], workingDirectory: String? = nil,
        timeoutMs: Int? = nil, maxAttempts: Int = 1, labels: [String: String] = [:], backoff: Backoff? = nil,
        isolation: IsolationLevel? = nil, network: NetworkMode? = nil, limits: JobLimits = JobLimits(),
        secretEnvironment: [String] = []
    ) {
        self.command = command
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeoutMs = timeoutMs
        self.maxAttempts = maxAttempts
        self.labels = labels
        self.backoff = backoff
        self.isolation = isolation
        self.network = network
        self.limits = limits
        self.secretEnvironment = secretEnvironment
    }

    /// JSON field names of the spec.
    public enum Key {
        public static let argv = "argv"
        public static let shell = "shell"
        public static let env = "env"
        public static let cwd = "cwd"
        public static let timeoutMs = "timeout_ms"
        public static let maxAttempts = "max_attempts"
        public static let labels = "labels"
        public static let backoff = "backoff"
        public static let isolation = "isolation"
        public static let network = "network"
        public static let limits = "limits"
        public static let secretEnv = "secret_env"
        public static let requires = "requires"
        public static let all = [
            argv, shell, env, cwd, timeoutMs, maxAttempts, labels, backoff, isolation, network, limits, secretEnv,
            requires,
        ]
    }

    /// The largest accepted spec, in bytes of JSON.
    public static let maximumEncodedSize = 1 << 20

    /// Parses and validates a spec. The error names the field and what is wrong with it.
    public init(json bytes: [UInt8]) throws(JobSpecError) {
        guard bytes.count <= JobSpec.maximumEncodedSize else {
            throw JobSpecError("spec is \(bytes.count) bytes, more than the limit of \(JobSpec.maximumEncodedSize)")
        }
        let document: JSONValue
        do {
            document = try JSONValue(parsing: bytes)
        } catch {
            throw JobSpecError("spec is not valid JSON: \(error.message)")
        }
        guard case .object(let fields) = document else {
            throw JobSpecError("spec must be a JSON object, got \(document.typeName)")
        }
        try self.init(fields: fields)
    }

    private init(fields: [String: JSONValue]) throws(JobSpecError) {
        switch (fields[Key.argv], fields[Key.shell]) {
        case (nil, nil), (.null?, nil), (nil, .null?), (.null?, .null?):
            throw JobSpecError("spec has no command: give \"argv\" (array of strings) or \"shell\" (string)")
        case (let argv?, let shell?) where argv != .null && shell != .null:
            throw JobSpecError("spec has both \"argv\" and \"shell\": give one")
        case (let argv?, _) where argv != .null:
            guard case .array(let items) = argv else {
                throw JobSpecError("spec.argv must be an array of strings, got \(argv.typeName)")
            }
            guard !items.isEmpty else { throw JobSpecError("spec.argv is empty") }
            var strings: [String] = []
            for (index, item) in items.enumerated() {
                guard case .string(let s) = item else {
                    throw JobSpecError("spec.argv[\(index)] must be a string, got \(item.typeName)")
                }
                guard !s.utf8.contains(0) else { throw JobSpecError("spec.argv[\(index)] contains a NUL byte") }
                strings.append(s)
            }
            guard !strings[0].isEmpty else { throw JobSpecError("spec.argv[0] is empty") }
            command = .argv(strings)
        case (_, let shell?):
            guard case .string(let script) = shell else {
                throw JobSpecError("spec.shell must be a string, got \(shell.typeName)")
            }
            guard !script.isEmpty else { throw JobSpecError("spec.shell is empty") }
            guard !script.utf8.contains(0) else { throw JobSpecError("spec.shell contains a NUL byte") }
            command = .shell(script)
        default:
            throw JobSpecError("spec has no command: give \"argv\" (array of strings) or \"shell\" (string)")
        }

        environment = try JobSpec.stringMap(fields[Key.env], name: Key.env, validateKeys: true)
        labels = try JobSpec.stringMap(fields[Key.labels], name: Key.labels, validateKeys: false)
        let required = try JobSpec.stringMap(fields[Key.requires], name: Key.requires, validateKeys: false)
        do {
            requires = try LabelSet(required)
        } catch {
            throw JobSpecError("spec.requires: \(error.message)")
        }

        switch fields[Key.cwd] {
        case nil, .null?: workingDirectory = nil
        case .string(let dir)?:
            guard !dir.isEmpty else { throw JobSpecError("spec.cwd is empty") }
            guard !dir.utf8.contains(0) else { throw JobSpecError("spec.cwd contains a NUL byte") }
            workingDirectory = dir
        case let other?: throw JobSpecError("spec.cwd must be a string, got \(other.typeName)")
        }

        timeoutMs = try JobSpec.positiveInt(fields[Key.timeoutMs], name: Key.timeoutMs)
        maxAttempts = try JobSpec.positiveInt(fields[Key.maxAttempts], name: Key.maxAttempts) ?? 1
        switch fields[Key.backoff] {
        case nil, .null?: backoff = nil
        case .object(let members)?: backoff = try Backoff(fields: members)
        case let other?: throw JobSpecError("spec.backoff must be an object, got \(other.typeName)")
        }

        isolation = try JobSpec.choice(fields[Key.isolation], name: Key.isolation, spellings: IsolationLevel.spellings)
        network = try JobSpec.choice(fields[Key.network], name: Key.network, spellings: NetworkMode.spellings)
        // A named level that cannot give the network is a mistake in the spec itself; limits are checked against
        // the level the job runs at (the runner's default when it names none) by the runner's planning.
        if let network, let isolation,
            let shortfall = IsolationShortfall.first(network: network, limits: JobLimits(), at: isolation)
        {
            throw JobSpecError("spec.\(shortfall.message)")
        }
        limits = try JobSpec.limits(fields[Key.limits])
        secretEnvironment = try JobSpec.names(fields[Key.secretEnv], name: Key.secretEnv)
    }

    private static func choice<T: RawRepresentable<String>>(
        _ value: JSONValue?, name: String, spellings: String
    ) throws(JobSpecError) -> T? {
        switch value {
        case nil, .null?: return nil
        case .string(let s)?:
            guard let choice = T(rawValue: s) else {
                throw JobSpecError("spec.\(name) must be one of \(spellings), got \"\(s)\"")
            }
            return choice
        case let other?: throw JobSpecError("spec.\(name) must be a string (\(spellings)), got \(other.typeName)")
        }
    }

    private static func limits(_ value: JSONValue?) throws(JobSpecError) -> JobLimits {
        switch value {
        case nil, .null?: return JobLimits()
        case .object(let members)?:
            var values: [String: Int] = [:]
            for (key, member) in members {
                // Unknown limits are refused, unlike unknown spec fields: a limit the runner would silently not
                // apply is worse than a rejection.
                guard JobLimits.Key.all.contains(key) else {
                    throw JobSpecError(
                        "spec.limits.\(key) is not a known limit (\(JobLimits.Key.all.joined(separator: ", ")))")
                }
                let value = try positiveInt(member, name: "\(Key.limits).\(key)")
                if let value, let range = JobLimits.accepted[key], !range.contains(value) {
                    throw JobSpecError(
                        "spec.limits.\(key) must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
                }
                values[key] = value
            }
            return JobLimits(values: values)
        case let other?: throw JobSpecError("spec.limits must be an object of positive integers, got \(other.typeName)")
        }
    }

    private static func names(_ value: JSONValue?, name: String) throws(JobSpecError) -> [String] {
        switch value {
        case nil, .null?: return []
        case .array(let items)?:
            var names: [String] = []
            for (index, item) in items.enumerated() {
                guard case .string(let s) = item else {
                    throw JobSpecError("spec.\(name)[\(index)] must be a variable name, got \(item.typeName)")
                }
                guard !s.isEmpty else { throw JobSpecError("spec.\(name)[\(index)] is empty") }
                names.append(s)
            }
            return names
        case let other?: throw JobSpecError("spec.\(name) must be an array of variable names, got \(other.typeName)")
        }
    }

    static func positiveInt(_ value: JSONValue?, name: String) throws(JobSpecError) -> Int? {
        switch value {
        case nil, .null?: return nil
        case .int(let i)? where i > 0: return i
        case .int(let i)?: throw JobSpecError("spec.\(name) must be a positive integer, got \(i)")
        case .double(let d)?: throw JobSpecError("spec.\(name) must be a positive integer, got \(d)")
        case let other?: throw JobSpecError("spec.\(name) must be a positive integer, got \(other.typeName)")
        }
    }

    private static func stringMap(
        _ value: JSONValue?, name: String, validateKeys: Bool
    ) throws(JobSpecError) -> [String: String] {
        switch value {
        case nil, .null?: return [:]
        case .object(let members)?:
            var result: [String: String] = [:]
            for key in members.keys.sorted() {
                guard case .string(let s) = members[key]! else {
                    throw JobSpecError("spec.\(name).\(key) must be a string, got \(members[key]!.typeName)")
                }
                if validateKeys {
                    let invalid = key.unicodeScalars.contains {
                        $0 == "=" || $0.value < 0x21 || $0.properties.isWhitespace
                    }
                    guard !key.isEmpty, !invalid else {
                        throw JobSpecError("spec.\(name) has an invalid variable name \"\(key)\"")
                    }
                    guard !s.utf8.contains(0) else {
                        throw JobSpecError("spec.\(name).\(key) contains a NUL byte")
                    }
                }
                result[key] = s
            }
            return result
        case let other?:
            throw JobSpecError("spec.\(name) must be an object of strings, got \(other.typeName)")
        }
    }

    /// The spec as JSON, in the documented form.
    public var json: JSONValue {
        var fields: [String: JSONValue] = [:]
        switch command {
        case .argv(let argv): fields[Key.argv] = .array(argv.map(JSONValue.string))
        case .shell(let script): fields[Key.shell] = .string(script)
        }
        if !environment.isEmpty { fields[Key.env] = .object(environment.mapValues(JSONValue.string)) }
        if let workingDirectory { fields[Key.cwd] = .string(workingDirectory) }
        if let timeoutMs { fields[Key.timeoutMs] = .int(timeoutMs) }
        if maxAttempts != 1 { fields[Key.maxAttempts] = .int(maxAttempts) }
        if !labels.isEmpty { fields[Key.labels] = .object(labels.mapValues(JSONValue.string)) }
        if let backoff { fields[Key.backoff] = backoff.json }
        if let isolation { fields[Key.isolation] = .string(isolation.rawValue) }
        if let network { fields[Key.network] = .string(network.rawValue) }
        if !limits.isEmpty { fields[Key.limits] = limits.jsonObject }
        if !secretEnvironment.isEmpty { fields[Key.secretEnv] = .array(secretEnvironment.map(JSONValue.string)) }
        if !requires.isEmpty { fields[Key.requires] = requires.json }
        return .object(fields)
    }
}

/// Why a job entry or spec was refused. The message names the field and the problem.
public struct JobSpecError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
