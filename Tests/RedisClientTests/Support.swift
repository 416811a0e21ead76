import RedisClient
import Synchronization
import TestSupport
import XCTest

/// Collects the lines a RedisClient logs.
final class LogLines: Sendable {
    private let lines = Mutex<[String]>([])

    var all: [String] {
        lines.withLock { $0 }
    }

    var sink: @Sendable (String) -> Void {
        { line in self.lines.withLock { $0.append(line) } }
    }

    func count(containing text: String) -> Int {
        all.filter { $0.contains(text) }.count
    }
}

extension RedisServerProcess {
    /// A fresh connection without AUTH trouble (the fixture's own endpoint), for checks beside the client under test.
    func connection(database: Int = 0) throws -> RedisConnection {
        var endpoint = endpoint
        endpoint.database = database
        return try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(5))
    }

    /// `blocked_clients` from INFO clients.
    func blockedClients() throws -> Int {
        let info = try connection().send(RedisCommand("INFO", "clients")).string ?? ""
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("blocked_clients:") {
            return Int(line.dropFirst("blocked_clients:".count)) ?? -1
        }
        return -1
    }
}

func bulk(_ text: String) -> RedisReply {
    .bulk(Array(text.utf8))
}

/// The error a throwing async call ended with (nil if it returned).
func thrownError<T>(_ body: () async throws -> T) async -> (any Error)? {
    do {
        _ = try await body()
        return nil
    } catch {
        return error
    }
}

/// Options with short timeouts for tests.
func testOptions(name: String = "test", readTimeout: Duration = .seconds(5)) -> RedisClientOptions {
    var options = RedisClientOptions()
    options.name = name
    options.connectTimeout = .seconds(1)
    options.readTimeout = readTimeout
    options.initialBackoff = .milliseconds(10)
    options.maximumBackoff = .milliseconds(80)
    return options
}

/// XCTAssertEqual for an async expression (XCTest's autoclosures cannot await).
func assertEqualAsync<T: Equatable>(
    _ expression: @autoclosure () async throws -> T, _ expected: @autoclosure () -> T,
    file: StaticString = #filePath, line: UInt = #line
) async {
    do {
        let value = try await expression()
        XCTAssertEqual(value, expected(), file: file, line: line)
    } catch {
        XCTFail("threw \(error)", file: file, line: line)
    }
}

/// XCTAssertTrue for an async expression.
func assertTrueAsync(
    _ expression: @autoclosure () async -> Bool, _ message: String = "", file: StaticString = #filePath,
    line: UInt = #line
) async {
    let value = await expression()
    XCTAssertTrue(value, message, file: file, line: line)
}

/// Polls `condition` with Task.sleep between polls (the async waitUntil), without blocking a pool thread.
func eventually(timeout: Duration = .seconds(5), _ condition: () throws -> Bool) async -> Bool {
    await waitUntil(timeout: timeout) { () async in (try? condition()) ?? false }
}
