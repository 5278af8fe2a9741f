// The Durable Streams conformance suite against DS_BASE_URL (e.g. http://127.0.0.1:8080).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

if (!process.env.DS_BASE_URL) throw new Error("set DS_BASE_URL to the server's base URL")
runConformanceTests({ baseUrl: process.env.DS_BASE_URL })
