// OpenNebula's XML-RPC API from the browser, at /RPC2 on the page's own origin.
// A call answers OpenNebula's array [success, value, error code]; a failure is
// thrown as ApiError carrying the API's text unchanged, so the page shows exactly
// what oned (or this daemon) said.

export class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

function encode(doc, value) {
  const v = doc.createElement("value");
  let typed;
  if (typeof value === "boolean") {
    typed = doc.createElement("boolean");
    typed.textContent = value ? "1" : "0";
  } else if (Number.isInteger(value)) {
    typed = doc.createElement("i4");
    typed.textContent = String(value);
  } else {
    typed = doc.createElement("string");
    typed.textContent = String(value);
  }
  v.appendChild(typed);
  return v;
}

/** The methodCall document (XMLSerializer escapes every text). */
export function callBody(method, params) {
  const doc = document.implementation.createDocument(null, "methodCall", null);
  const name = doc.createElement("methodName");
  name.textContent = method;
  doc.documentElement.appendChild(name);
  const ps = doc.createElement("params");
  for (const p of params) {
    const param = doc.createElement("param");
    param.appendChild(encode(doc, p));
    ps.appendChild(param);
  }
  doc.documentElement.appendChild(ps);
  return '<?xml version="1.0"?>' + new XMLSerializer().serializeToString(doc);
}

function decode(value) {
  const typed = value.firstElementChild;
  if (!typed) return value.textContent; // <value>text</value> is a string
  switch (typed.tagName) {
    case "i4":
    case "int":
    case "i8":
      return parseInt(typed.textContent, 10);
    case "boolean":
      return typed.textContent.trim() === "1";
    case "double":
      return parseFloat(typed.textContent);
    case "array":
      return Array.from(typed.querySelectorAll(":scope > data > value"), decode);
    case "struct": {
      const out = {};
      for (const m of typed.querySelectorAll(":scope > member")) {
        out[m.querySelector("name").textContent] = decode(m.querySelector("value"));
      }
      return out;
    }
    default:
      return typed.textContent;
  }
}

/** One call; resolves to the value, rejects with ApiError (the API's own text). */
export async function call(method, ...params) {
  const res = await fetch("/RPC2", {
    method: "POST",
    headers: { "Content-Type": "text/xml" },
    body: callBody(method, params),
    credentials: "omit",
    cache: "no-store",
  });
  const text = await res.text();
  if (!res.ok) throw new ApiError(`HTTP ${res.status}: ${text}`, res.status);
  const doc = new DOMParser().parseFromString(text, "text/xml");
  const fault = doc.querySelector("methodResponse > fault > value");
  if (fault) {
    const f = decode(fault);
    throw new ApiError(f.faultString, f.faultCode);
  }
  const result = doc.querySelector("methodResponse > params > param > value");
  if (!result) throw new ApiError("Malformed XML-RPC reply", -1);
  const [ok, value, code] = decode(result);
  if (!ok) throw new ApiError(value, code);
  return value;
}

/** An OpenNebula template in its XML form (XMLSerializer does the escaping). */
export function templateXml(attrs) {
  const doc = document.implementation.createDocument(null, "TEMPLATE", null);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === "") continue;
    const el = doc.createElement(k);
    el.textContent = String(v);
    doc.documentElement.appendChild(el);
  }
  return new XMLSerializer().serializeToString(doc);
}
