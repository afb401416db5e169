// The one API the Inspector speaks: memoire.v1 over gRPC-Web, with clients generated from
// proto/ (npm run gen). Every call carries the API key the user signed in with.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";
import { AdminService } from "./gen/memoire/v1/admin_pb";
import { MemoryService } from "./gen/memoire/v1/memory_pb";

export interface Api {
  memory: Client<typeof MemoryService>;
  admin: Client<typeof AdminService>;
}

/** Clients whose calls carry `key` as `authorization: Bearer <key>`, to this page's origin. */
export function connect(key: string): Api {
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl: location.origin, interceptors: [bearer] });
  return { memory: createClient(MemoryService, transport), admin: createClient(AdminService, transport) };
}

/** A failed call as the UI shows it: the status, its message, and the fields it names. */
export interface Failure {
  code: string;
  message: string;
  /** `google.rpc.BadRequest` violations: request field name → what is wrong with it. */
  fields: Map<string, string>;
}

export function failure(e: unknown): Failure {
  const err = ConnectError.from(e);
  const fields = new Map<string, string>();
  for (const detail of err.findDetails(BadRequestSchema)) {
    for (const v of detail.fieldViolations) fields.set(v.field, v.description);
  }
  return { code: codeName(err.code), message: err.rawMessage, fields };
}

function codeName(code: Code): string {
  // Code[Code.InvalidArgument] is "InvalidArgument"; gRPC spells it INVALID_ARGUMENT.
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
