import Foundation

/// Poll a condition until a deadline (no sleep-to-wait in tests): returns true if it became true.
public func waitUntil(
    timeout: Duration, interval: Duration = .milliseconds(20), _ condition: () throws -> Bool
) rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try condition() {
            return true
        }
        if ContinuousClock.now >= deadline {
            return false
        }
        let (seconds, attoseconds) = interval.components
        Thread.sleep(forTimeInterval: Double(seconds) + Double(attoseconds) / 1e18)
    }
}

/// Poll an async condition until a deadline (Task.sleep between polls): returns true if it became true.
public func waitUntil(
    timeout: Duration, interval: Duration = .milliseconds(20), _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() {
            return true
        }
        if ContinuousClock.now >= deadline {
            return false
        }
        try? await Task.sleep(for: interval)
    }
}

/// Why freeLoopbackPort failed.
public struct FreePortError: Error, CustomStringConvertible {
    /// The failing call and errno text.
    public var description: String
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, close).
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else {
        throw FreePortError(description: "socket: \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard bound == 0 else {
        throw FreePortError(description: "bind 127.0.0.1:0: \(String(cString: strerror(errno)))")
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            getsockname(fd, $0, &length)
        }
    }
    guard named == 0 else {
        throw FreePortError(description: "getsockname: \(String(cString: strerror(errno)))")
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Is the process alive (not a zombie)? Reads /proc/<pid>/stat; zombie or missing → false.
public func processIsAlive(_ pid: Int32) -> Bool {
    guard pid > 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else {
        return false
    }
    // "pid (comm) S ...": comm may contain spaces and parentheses, so the state follows the last ")".
    guard let close = stat.lastIndex(of: ")") else {
        return false
    }
    let state = stat[stat.index(after: close)...].drop { $0 == " " }.first
    return state != nil && state != "Z" && state != "X" && state != "x"
}
