// Reading OpenNebula's documents (IMAGE_POOL, DATASTORE_POOL) into plain objects.

export const IMAGE_STATES = [
  "INIT", "READY", "USED", "DISABLED", "LOCKED", "ERROR", "CLONE", "DELETE",
  "USED_PERS", "LOCKED_USED", "LOCKED_USED_PERS",
];
export const IMAGE_TYPES = ["OS", "CDROM", "DATABLOCK", "KERNEL", "RAMDISK", "CONTEXT"];
const PERM_KEYS = [
  "OWNER_U", "OWNER_M", "OWNER_A", "GROUP_U", "GROUP_M", "GROUP_A",
  "OTHER_U", "OTHER_M", "OTHER_A",
];

function text(el, name) {
  const child = el.querySelector(`:scope > ${name}`);
  return child ? child.textContent : "";
}

function int(el, name) {
  return parseInt(text(el, name), 10);
}

/** The template's top-level attributes (a vector shows as its sub-attributes' text). */
function attributes(template) {
  if (!template) return [];
  return Array.from(template.children, (c) =>
    c.children.length
      ? [c.tagName, Array.from(c.children, (s) => `${s.tagName}=${s.textContent}`).join(", ")]
      : [c.tagName, c.textContent],
  );
}

/** The nine permission bits as oned's octal text ("640"). */
export function octal(bits) {
  let out = "";
  for (let i = 0; i < 9; i += 3) {
    out += String(bits[i] * 4 + bits[i + 1] * 2 + bits[i + 2]);
  }
  return out;
}

/** "640" -> the nine arguments of one.image.chmod, or null when not three octal digits. */
export function chmodArgs(octalText) {
  if (!/^[0-7]{3}$/.test(octalText)) return null;
  const out = [];
  for (const digit of octalText) {
    const d = parseInt(digit, 8);
    out.push(d & 4 ? 1 : 0, d & 2 ? 1 : 0, d & 1 ? 1 : 0);
  }
  return out;
}

export function parseImage(el) {
  const perms = el.querySelector(":scope > PERMISSIONS");
  const bits = PERM_KEYS.map((k) => (perms ? int(perms, k) : 0));
  const template = el.querySelector(":scope > TEMPLATE");
  const snapshots = el.querySelectorAll(":scope > SNAPSHOTS > SNAPSHOT").length;
  return {
    id: int(el, "ID"),
    uid: int(el, "UID"),
    name: text(el, "NAME"),
    owner: text(el, "UNAME"),
    group: text(el, "GNAME"),
    datastore: text(el, "DATASTORE"),
    datastoreId: int(el, "DATASTORE_ID"),
    sizeMb: int(el, "SIZE"),
    type: IMAGE_TYPES[int(el, "TYPE")] ?? text(el, "TYPE"),
    persistent: text(el, "PERSISTENT") === "1",
    state: IMAGE_STATES[int(el, "STATE")] ?? text(el, "STATE"),
    runningVms: int(el, "RUNNING_VMS"),
    source: text(el, "SOURCE"),
    path: text(el, "PATH"),
    format: text(el, "FORMAT"),
    fs: text(el, "FS"),
    regtime: int(el, "REGTIME"),
    permissions: octal(bits),
    error: template ? text(template, "ERROR") : "",
    template: attributes(template),
    snapshots,
  };
}

function parse(xml) {
  const doc = new DOMParser().parseFromString(xml, "text/xml");
  if (doc.querySelector("parsererror")) throw new Error("Malformed document from the API");
  return doc;
}

export function parseImagePool(xml) {
  return Array.from(parse(xml).querySelectorAll("IMAGE_POOL > IMAGE"), parseImage);
}

export function parseImageInfo(xml) {
  return parseImage(parse(xml).documentElement);
}

/** Image datastores (TYPE 0) the caller can see: [{id, name}]. */
export function parseImageDatastores(xml) {
  return Array.from(parse(xml).querySelectorAll("DATASTORE_POOL > DATASTORE"))
    .filter((el) => text(el, "TYPE") === "0")
    .map((el) => ({ id: int(el, "ID"), name: text(el, "NAME"), freeMb: int(el, "FREE_MB") }));
}

export function humanSize(mb) {
  if (!Number.isFinite(mb)) return "";
  if (mb >= 1024 * 1024) return `${(mb / 1024 / 1024).toFixed(1)} TB`;
  if (mb >= 1024) return `${(mb / 1024).toFixed(1)} GB`;
  return `${mb} MB`;
}

export function humanBytes(bytes) {
  if (!Number.isFinite(bytes)) return "";
  return humanSize(Math.round((bytes / 1048576) * 10) / 10);
}
