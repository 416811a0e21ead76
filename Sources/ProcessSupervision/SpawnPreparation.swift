import Glibc

/// A NULL-terminated array of C strings, copied (strdup) for the life of the object: what execve needs, allocated
/// in the parent so that the child allocates nothing.
final class CStringArray {
    private(set) var pointers: [UnsafeMutablePointer<CChar>?]

    /// nil when strdup fails (ENOMEM).
    init?(_ strings: [String]) {
        pointers = []
        pointers.reserveCapacity(strings.count + 1)
        for string in strings {
            guard let copy = strdup(string) else { return nil }
            pointers.append(copy)
        }
        pointers.append(nil)
    }

    deinit {
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
        for (index, argument) in arguments.enumerated() where argument.utf8.contains(0) {
            throw SpawnError.invalidArgument(spec, "argument \(index) contains a NUL byte")
        }
        var environment: [String] = []
        environment.reserveCapacity(spec.environment.count)
        // Sorted, so that a job sees the same environment order every time.
        for (key, value) in spec.environment.sorted(by: { $0.key < $1.key }) {
            if key.isEmpty || key.utf8.contains(UInt8(ascii: "=")) || key.utf8.contains(0) || value.utf8.contains(0) {
                throw SpawnError.invalidArgument(spec, "invalid environment variable name or value for '\(key)'")
            }
            environment.append("\(key)=\(value)")
        }
        if let directory = spec.workingDirectory, directory.isEmpty || directory.utf8.contains(0) {
            throw SpawnError.invalidArgument(spec, "invalid working directory '\(directory)'")
        }
        if spec.executable.utf8.contains(0) {
            throw SpawnError.invalidArgument(spec, "the executable name contains a NUL byte")
        }
        self.path = try Self.resolve(spec)
        self.arguments = arguments
        self.environment = environment
    }

    /// A name with a slash is used as is (execve resolves a relative one in the child's working directory). A bare
    /// name is looked up in the job's PATH, like execvp: the first executable regular file wins; failing that, the
    /// first file found (execve then reports why it cannot run); failing that, not found.
    static func resolve(_ spec: ProcessSpec) throws(SpawnError) -> String {
        let name = spec.executable
        guard !name.isEmpty else { throw SpawnError.notFound(spec) }
        if name.utf8.contains(UInt8(ascii: "/")) {
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
