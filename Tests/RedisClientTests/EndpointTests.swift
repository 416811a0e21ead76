import RedisClient
import XCTest

final class EndpointTests: XCTestCase {
    private func parse(_ text: String) throws -> RedisEndpoint {
        try RedisEndpoint(parsing: text)
    }

    private func parseError(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> RedisClientError? {
        do {
            let endpoint = try RedisEndpoint(parsing: text)
            XCTFail("\"\(text)\" parsed as \(endpoint)", file: file, line: line)
            return nil
        } catch {
            XCTAssertEqual(error.code, .invalidEndpoint, file: file, line: line)
            return error
        }
    }

    func testHostAndPortForms() throws {
        XCTAssertEqual(try parse("localhost"), RedisEndpoint(host: "localhost", port: 6379))
        XCTAssertEqual(try parse("10.0.0.5:6380"), RedisEndpoint(host: "10.0.0.5", port: 6380))
        XCTAssertEqual(try parse("[::1]:6380"), RedisEndpoint(host: "::1", port: 6380))
        XCTAssertEqual(try parse("[::1]"), RedisEndpoint(host: "::1", port: 6379))
        XCTAssertEqual(try parse("::1"), RedisEndpoint(host: "::1", port: 6379))
        XCTAssertEqual(try parse("  redis.internal:1 \n"), RedisEndpoint(host: "redis.internal", port: 1))
        XCTAssertEqual(try parse("h:65535").port, 65535)
    }

    func testURLForms() throws {
        XCTAssertEqual(try parse("redis://host"), RedisEndpoint(host: "host"))
        XCTAssertEqual(try parse("REDIS://host:7000/3"), RedisEndpoint(host: "host", port: 7000, database: 3))
        XCTAssertEqual(try parse("redis://host/"), RedisEndpoint(host: "host"))
        XCTAssertEqual(try parse("redis://:secret@host"), RedisEndpoint(host: "host", password: "secret"))
        XCTAssertEqual(
            try parse("redis://alice:p%40ss%3Aw%2F@cache:6390/2"),
            RedisEndpoint(host: "cache", port: 6390, username: "alice", password: "p@ss:w/", database: 2)
        )
        XCTAssertEqual(
            try parse("redis://b%C3%B6b:x@[::1]:6391/1"),
            RedisEndpoint(host: "::1", port: 6391, username: "böb", password: "x", database: 1)
        )
        // The last "@" ends the user info, so a password may hold a raw "@".
        XCTAssertEqual(try parse("redis://:a@b@host").password, "a@b")
    }

    func testBadPorts() {
        for (text, port) in [
            ("host:0", "0"), ("host:65536", "65536"), ("host:abc", "abc"), ("host:", ""),
            ("host:-1", "-1"), ("[::1]:99999", "99999"), ("redis://h:+5", "+5"),
        ] {
            XCTAssertEqual(
                parseError(text)?.message,
                "invalid Redis endpoint \"\(text)\": the port must be a number from 1 to 65535, not \"\(port)\""
            )
        }
    }

    func testBadSchemesAndShapes() {
        XCTAssertEqual(
            parseError("http://host")?.message,
            "invalid Redis endpoint \"http://host\": unsupported scheme \"http://\" "
                + "(use redis://host:port or host:port)"
        )
        XCTAssertEqual(
            parseError("rediss://host")?.message,
            "invalid Redis endpoint \"rediss://host\": TLS (rediss://) is not supported"
        )
        XCTAssertEqual(parseError("")?.message, "invalid Redis endpoint \"\": it is empty")
        XCTAssertEqual(parseError("redis://")?.message, "invalid Redis endpoint \"redis://\": the host is missing")
        XCTAssertEqual(parseError(":6379")?.message, "invalid Redis endpoint \":6379\": the host is missing")
        XCTAssertEqual(
            parseError("redis://host/x")?.message,
            "invalid Redis endpoint \"redis://host/x\": the database must be a non-negative integer, not \"x\""
        )
        XCTAssertEqual(
            parseError("redis://user@host")?.message,
            "invalid Redis endpoint \"redis://user@host\": a user name needs a password "
                + "(redis://user:password@host or redis://:password@host)"
        )
        XCTAssertEqual(
            parseError("redis://u:@host")?.message,
            "invalid Redis endpoint \"redis://u:***@host\": the password is empty"
        )
        XCTAssertEqual(
            parseError("redis://a:b%zz@host")?.message,
            "invalid Redis endpoint \"redis://a:***@host\": bad percent-encoding in the user or password"
        )
        XCTAssertEqual(
            parseError("[::1")?.message,
            "invalid Redis endpoint \"[::1\": missing \"]\" after the IPv6 address"
        )
        XCTAssertEqual(
            parseError("[::1]x")?.message,
            "invalid Redis endpoint \"[::1]x\": expected \":port\" after \"]\""
        )
        XCTAssertEqual(
            parseError("host/2")?.message,
            "invalid Redis endpoint \"host/2\": expected host:port, or a redis:// URL for a password or database"
        )
        XCTAssertEqual(
            parseError("redis://host?db=1")?.message,
            "invalid Redis endpoint \"redis://host?db=1\": query and fragment are not supported"
        )
        XCTAssertEqual(
            parseError("my host")?.message,
            "invalid Redis endpoint \"my host\": the host contains white space"
        )
    }

    func testErrorMessagesNeverShowThePassword() {
        let error = parseError("redis://u:topsecret@host:99999")
        XCTAssertEqual(
            error?.message,
            "invalid Redis endpoint \"redis://u:***@host:99999\": "
                + "the port must be a number from 1 to 65535, not \"99999\""
        )
        XCTAssertFalse(error?.description.contains("topsecret") ?? true)
    }

    func testDescriptionRedactsThePassword() throws {
        XCTAssertEqual(RedisEndpoint(host: "127.0.0.1").description, "127.0.0.1:6379")
        XCTAssertEqual(
            RedisEndpoint(host: "host", username: "user", password: "pw", database: 2).description,
            "redis://user:***@host:6379/2"
        )
        XCTAssertEqual(RedisEndpoint(host: "host", port: 1, password: "pw").description, "redis://:***@host:1")
        XCTAssertEqual(RedisEndpoint(host: "host", database: 3).description, "redis://host:6379/3")
        XCTAssertEqual(RedisEndpoint(host: "::1", port: 6380).description, "[::1]:6380")
        XCTAssertEqual(
            RedisEndpoint(host: "h", username: "a:b@c", password: "pw").description,
            "redis://a%3Ab%40c:***@h:6379"
        )
        XCTAssertEqual(try parse("redis://alice:p%40ss@cache:6390/2").description, "redis://alice:***@cache:6390/2")
        for text in ["127.0.0.1:6379", "[::1]:6380", "redis://host:6379/3"] {
            XCTAssertEqual(try parse(text).description, text)
        }
    }
}
