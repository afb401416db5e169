// How values of the contract read in the UI.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Basis, KeyRole, MemoryKind, MemoryStatus, VersionOp } from "./gen/memoire/v1/types_pb";

/** `MEMORY_KIND_FACT` → "fact". */
function enumLabel(names: Record<number, string>, v: number): string {
  return (names[v] ?? "unspecified").toLowerCase().replace(/_/g, " ");
}

export const kindLabel = (k: MemoryKind): string => enumLabel(MemoryKind, k);
export const statusLabel = (s: MemoryStatus): string => enumLabel(MemoryStatus, s);
export const opLabel = (o: VersionOp): string => enumLabel(VersionOp, o);
export const basisLabel = (b: Basis): string => enumLabel(Basis, b);
export const roleLabel = (r: KeyRole): string => enumLabel(KeyRole, r);

export function when(t: Timestamp | undefined): string {
  if (!t) return "";
  return timestampDate(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function num(v: number | undefined, digits = 3): string {
  return v === undefined ? "" : v.toFixed(digits);
}

/**
 * The journaling demo's four views of a user's memory, by kind; what fits none of them is
 * shown under "Other".
 */
export const VIEWS: { title: string; kinds: MemoryKind[] }[] = [
  { title: "Identity", kinds: [MemoryKind.FACT, MemoryKind.TRAIT] },
  { title: "Principles & rules", kinds: [MemoryKind.RULE] },
  { title: "Focus & goals", kinds: [MemoryKind.GOAL, MemoryKind.EVENT] },
  { title: "Signals & preferences", kinds: [MemoryKind.PREFERENCE, MemoryKind.SIGNAL] },
  { title: "Other", kinds: [MemoryKind.SUMMARY, MemoryKind.DOCUMENT, MemoryKind.UNSPECIFIED] },
];

/** The kinds a user can pick in filters and forms. */
export const KINDS: MemoryKind[] = [
  MemoryKind.FACT,
  MemoryKind.PREFERENCE,
  MemoryKind.EVENT,
  MemoryKind.GOAL,
  MemoryKind.RULE,
  MemoryKind.TRAIT,
  MemoryKind.SIGNAL,
  MemoryKind.SUMMARY,
  MemoryKind.DOCUMENT,
];
