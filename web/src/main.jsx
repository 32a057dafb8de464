// The Images page: sign in with OpenNebula credentials, list and manage images,
// create them from a file (tus upload), a URL or as an empty datablock.
//
// Credentials: the password is sent once, to one.user.login, which answers a login
// token valid for SESSION_SECONDS; the page keeps "user" and that token in
// sessionStorage (this tab only, gone when it closes; it survives a reload) and
// revokes the token on sign-out. The password itself is never stored. Every text
// from the API is rendered by Preact as text, never as HTML.

import { render } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import {
  chmodArgs, humanBytes, humanSize, IMAGE_TYPES, parseImageDatastores, parseImageInfo,
  parseImagePool,
} from "./one.js";
import { basicAuth, forgetUpload, startUpload, unfinishedUploads } from "./uploads.js";
import { call, templateXml } from "./xmlrpc.js";
import "./style.css";

const SESSION_KEY = "oned-images.session";
const SESSION_SECONDS = 8 * 3600;
const REFRESH_MS = 3000;
/** oned's AUTHENTICATION error code: the token expired or was revoked */
const AUTHENTICATION = 256;

function loadSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY));
    return s && s.user && s.token ? s : null;
  } catch {
    return null;
  }
}

function secret(s) {
  return `${s.user}:${s.token}`;
}

function message(err) {
  return String((err && err.message) || err);
}

function SignIn({ onSignedIn, reason }) {
  const [user, setUser] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState(reason || "");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError("");
    try {
      const token = await call("one.user.login", `${user}:${password}`, user, "",
        SESSION_SECONDS, -1);
      const s = { user, token };
      sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
      onSignedIn(s);
    } catch (err) {
      setError(message(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form id="signin" class="card signin" onSubmit={submit}>
      <h1>OpenNebula images</h1>
      <label>User <input id="signin-user" autocomplete="username" value={user}
        onInput={(e) => setUser(e.currentTarget.value)} required /></label>
      <label>Password <input id="signin-password" type="password"
        autocomplete="current-password" value={password}
        onInput={(e) => setPassword(e.currentTarget.value)} required /></label>
      <button id="signin-submit" type="submit" disabled={busy}>Sign in</button>
      {error && <p class="error" role="alert">{error}</p>}
    </form>
  );
}

/** Fields every creation form shares: datastore, type, persistent, description. */
function CommonFields({ datastores, value, onChange, types = IMAGE_TYPES, prefix }) {
  const set = (k) => (e) => onChange({ ...value, [k]: e.currentTarget.type === "checkbox"
    ? e.currentTarget.checked : e.currentTarget.value });
  return (
    <>
      <label>Datastore <select id={`${prefix}-datastore`} value={value.datastore}
        onChange={set("datastore")}>
        {datastores.map((d) => <option value={String(d.id)}>{d.id}: {d.name}</option>)}
      </select></label>
      <label>Type <select id={`${prefix}-type`} value={value.type} onChange={set("type")}>
        {types.map((t) => <option value={t}>{t}</option>)}
      </select></label>
      <label class="check"><input id={`${prefix}-persistent`} type="checkbox"
        checked={value.persistent} onChange={set("persistent")} /> Persistent</label>
      <label>Description <input id={`${prefix}-description`} value={value.description}
        onInput={set("description")} /></label>
    </>
  );
}

function defaults(datastores, type = "OS") {
  return { datastore: datastores[0] ? String(datastores[0].id) : "1", type,
    persistent: false, description: "" };
}

function FileUploads({ session, datastores, onCreated }) {
  const [opts, setOpts] = useState(() => defaults(datastores));
  const [name, setName] = useState("");
  const [rows, setRows] = useState([]);
  const [pending, setPending] = useState([]);
  const [dragging, setDragging] = useState(false);
  const uploads = useRef(new Map());
  const nextKey = useRef(1);

  useEffect(() => { if (datastores.length && !opts.datastore) setOpts(defaults(datastores)); },
    [datastores]);
  const refreshPending = useCallback(async () => {
    setPending(await unfinishedUploads(session.user));
  }, [session.user]);
  useEffect(() => { refreshPending(); }, [refreshPending]);

  const update = (key, change) =>
    setRows((rs) => rs.map((r) => (r.key === key ? { ...r, ...change } : r)));

  const add = async (files) => {
    for (const file of files) {
      const key = nextKey.current++;
      const metadata = { name: (files.length === 1 && name) || file.name,
        datastore: opts.datastore, type: opts.type,
        persistent: opts.persistent ? "YES" : "NO" };
      if (opts.description) metadata.description = opts.description;
      setRows((rs) => [...rs, { key, file: file.name, size: file.size, sent: 0,
        status: "uploading", resumedAt: null, error: "", imageId: null }]);
      try {
        const upload = await startUpload(file, {
          session: secret(session), user: session.user, metadata,
          onProgress: (sent, total) => update(key, { sent, size: total }),
          onResume: (prev) => update(key, { resumedAt: prev.uploadUrl }),
          onError: (text) => { update(key, { status: "failed", error: text }); refreshPending(); },
          onSuccess: (imageId) => {
            update(key, { status: "done", imageId, sent: file.size });
            refreshPending();
            onCreated();
          },
        });
        uploads.current.set(key, upload);
      } catch (err) {
        update(key, { status: "failed", error: message(err) });
      }
    }
    setName("");
  };
  const pause = (key) => { uploads.current.get(key)?.abort(); update(key, { status: "paused" }); };
  const resume = (key) => { uploads.current.get(key)?.start(); update(key, { status: "uploading" }); };
  const cancel = async (key) => {
    const upload = uploads.current.get(key);
    if (upload) await upload.abort(true).catch(() => {});
    update(key, { status: "cancelled" });
    refreshPending();
  };

  return (
    <section id="create-file" class="card">
      <h2>From a file</h2>
      <div class="fields">
        <label>Name <input id="file-name" value={name} placeholder="the file's name"
          onInput={(e) => setName(e.currentTarget.value)} /></label>
        <CommonFields prefix="file" datastores={datastores} value={opts} onChange={setOpts} />
      </div>
      <div id="dropzone" class={dragging ? "dropzone dragging" : "dropzone"}
        onDragOver={(e) => { e.preventDefault(); setDragging(true); }}
        onDragLeave={() => setDragging(false)}
        onDrop={(e) => { e.preventDefault(); setDragging(false); add([...e.dataTransfer.files]); }}>
        Drop files here, or <label class="pick">choose<input id="file-input" type="file" multiple
          onChange={(e) => { add([...e.currentTarget.files]); e.currentTarget.value = ""; }} />
        </label>
      </div>
      {pending.length > 0 && (
        <div id="unfinished" class="unfinished">
          <p>Unfinished uploads (give the same file again to resume):</p>
          <ul>{pending.map((p) => (
            <li class="unfinished-upload" key={p.urlStorageKey}>
              {(p.metadata && (p.metadata.name || p.metadata.filename)) || p.uploadUrl}
              {" "}({humanBytes(p.size)})
              <button type="button" class="forget" onClick={async () => {
                await forgetUpload(p, secret(session)).catch(() => {});
                refreshPending();
              }}>Forget</button>
            </li>))}
          </ul>
        </div>
      )}
      <ul id="uploads" class="uploads">
        {rows.map((r) => (
          <li class={`upload ${r.status}`} key={r.key} data-status={r.status}
            data-image-id={r.imageId ?? ""}>
            <span class="upload-name">{r.file}</span>
            <progress class="upload-progress" max={r.size || 1} value={r.sent} />
            <span class="upload-percent">
              {r.size ? Math.floor((100 * r.sent) / r.size) : 0}%
            </span>
            {r.resumedAt && <span class="upload-resumed">resumed</span>}
            {r.status === "uploading" &&
              <button type="button" class="upload-pause" onClick={() => pause(r.key)}>Pause</button>}
            {r.status === "paused" &&
              <button type="button" class="upload-resume" onClick={() => resume(r.key)}>Resume</button>}
            {(r.status === "uploading" || r.status === "paused") &&
              <button type="button" class="upload-cancel" onClick={() => cancel(r.key)}>Cancel</button>}
            {r.status === "done" && <span class="upload-done">image {r.imageId}</span>}
            {r.error && <span class="error upload-error" role="alert">{r.error}</span>}
          </li>
        ))}
      </ul>
    </section>
  );
}

function UrlForm({ session, datastores, onCreated, onError }) {
  const [name, setName] = useState("");
  const [url, setUrl] = useState("");
  const [opts, setOpts] = useState(() => defaults(datastores));
  const submit = async (e) => {
    e.preventDefault();
    try {
      const tmpl = templateXml({ NAME: name, PATH: url, TYPE: opts.type,
        PERSISTENT: opts.persistent ? "YES" : "NO", DESCRIPTION: opts.description });
      await call("one.image.allocate", secret(session), tmpl, parseInt(opts.datastore, 10), false);
      setName(""); setUrl("");
      onCreated();
    } catch (err) {
      onError(message(err));
    }
  };
  return (
    <form id="create-url" class="card" onSubmit={submit}>
      <h2>From a URL</h2>
      <div class="fields">
        <label>Name <input id="url-name" value={name} required
          onInput={(e) => setName(e.currentTarget.value)} /></label>
        <label>URL <input id="url-path" value={url} required placeholder="https://…"
          onInput={(e) => setUrl(e.currentTarget.value)} /></label>
        <CommonFields prefix="url" datastores={datastores} value={opts} onChange={setOpts} />
      </div>
      <button id="url-submit" type="submit">Create</button>
    </form>
  );
}

function DatablockForm({ session, datastores, onCreated, onError }) {
  const [name, setName] = useState("");
  const [size, setSize] = useState("1024");
  const [fs, setFs] = useState("");
  const [opts, setOpts] = useState(() => defaults(datastores, "DATABLOCK"));
  const submit = async (e) => {
    e.preventDefault();
    try {
      const tmpl = templateXml({ NAME: name, TYPE: "DATABLOCK", SIZE: size, FS: fs,
        PERSISTENT: opts.persistent ? "YES" : "NO", DESCRIPTION: opts.description });
      await call("one.image.allocate", secret(session), tmpl, parseInt(opts.datastore, 10), false);
      setName("");
      onCreated();
    } catch (err) {
      onError(message(err));
    }
  };
  return (
    <form id="create-datablock" class="card" onSubmit={submit}>
      <h2>Empty datablock</h2>
      <div class="fields">
        <label>Name <input id="db-name" value={name} required
          onInput={(e) => setName(e.currentTarget.value)} /></label>
        <label>Size (MB) <input id="db-size" value={size} inputmode="numeric"
          onInput={(e) => setSize(e.currentTarget.value)} /></label>
        <label>File system <select id="db-fs" value={fs} onChange={(e) => setFs(e.currentTarget.value)}>
          {["", "raw", "ext4", "ext3", "ext2", "xfs"].map((f) =>
            <option value={f}>{f || "none"}</option>)}
        </select></label>
        <CommonFields prefix="db" datastores={datastores} value={opts} onChange={setOpts}
          types={["DATABLOCK"]} />
      </div>
      <button id="db-submit" type="submit">Create</button>
    </form>
  );
}

/** The inline form of a rename, clone or chmod: one text field and OK. */
function Ask({ ask, onDone, onCancel }) {
  const [value, setValue] = useState(ask.value);
  return (
    <form id="ask" class="ask" onSubmit={(e) => { e.preventDefault(); onDone(value); }}>
      <label>{ask.label} <input id="ask-value" value={value}
        onInput={(e) => setValue(e.currentTarget.value)} /></label>
      <button id="ask-ok" type="submit">OK</button>
      <button type="button" onClick={onCancel}>Cancel</button>
    </form>
  );
}

function Details({ image, onClose }) {
  const rows = [
    ["ID", image.id], ["Name", image.name], ["Owner", `${image.owner} (${image.group})`],
    ["Datastore", `${image.datastoreId}: ${image.datastore}`], ["Type", image.type],
    ["State", image.state], ["Size", humanSize(image.sizeMb)],
    ["Persistent", image.persistent ? "yes" : "no"], ["Permissions", image.permissions],
    ["Running VMs", image.runningVms], ["Format", image.format], ["FS", image.fs],
    ["Path", image.path], ["Source", image.source], ["Snapshots", image.snapshots],
    ["Registered", image.regtime ? new Date(image.regtime * 1000).toISOString() : ""],
  ];
  return (
    <section id="details" class="card details" data-id={image.id}>
      <h2>Image {image.id}: {image.name}
        <button type="button" id="details-close" class="close" onClick={onClose}>Close</button></h2>
      {image.error && <pre id="details-error" class="error image-error">{image.error}</pre>}
      <table><tbody>
        {rows.map(([k, v]) => <tr><th>{k}</th><td>{String(v)}</td></tr>)}
      </tbody></table>
      <h3>Template</h3>
      <table id="details-template"><tbody>
        {image.template.map(([k, v]) => <tr><th>{k}</th><td>{v}</td></tr>)}
      </tbody></table>
    </section>
  );
}

function ImageRow({ image, progress, act, onAsk, onDetails }) {
  const p = progress[String(image.id)];
  const disabled = image.state === "DISABLED";
  return (
    <tr class="image" data-id={image.id} data-state={image.state} data-name={image.name}>
      <td>{image.id}</td>
      <td class="image-name">{image.name}</td>
      <td>{image.owner}</td>
      <td>{image.datastore}</td>
      <td>{humanSize(image.sizeMb)}</td>
      <td>{image.type}</td>
      <td class="image-persistent">{image.persistent ? "yes" : "no"}</td>
      <td class="image-state">
        <span class={`state state-${image.state}`}>{image.state}</span>
        {p && (
          <span class="copy-progress">
            {/* total 0: the driver does not know it (mkfs): an indeterminate bar */}
            {p.total > 0 ? <progress max={p.total} value={p.done} /> : <progress />}
            {p.action} {humanBytes(p.done)}{p.total > 0 ? `/${humanBytes(p.total)}` : ""}
            {p.eta != null ? ` · ${Math.round(p.eta)} s left` : ""}
          </span>
        )}
        {image.error && <span class="error-flag" title={image.error}>!</span>}
      </td>
      <td>{image.runningVms}</td>
      <td class="actions">
        <button type="button" class="act-details" onClick={() => onDetails(image.id)}>Details</button>
        <button type="button" class="act-clone"
          onClick={() => onAsk({ kind: "clone", id: image.id, label: `Clone ${image.id} as`,
            value: `${image.name}-copy` })}>Clone</button>
        <button type="button" class="act-rename"
          onClick={() => onAsk({ kind: "rename", id: image.id, label: `Rename ${image.id} to`,
            value: image.name })}>Rename</button>
        <button type="button" class="act-persistent"
          onClick={() => act("one.image.persistent", image.id, !image.persistent)}>
          {image.persistent ? "Non-persistent" : "Persistent"}</button>
        <button type="button" class="act-enable"
          onClick={() => act("one.image.enable", image.id, disabled)}>
          {disabled ? "Enable" : "Disable"}</button>
        <button type="button" class="act-chmod"
          onClick={() => onAsk({ kind: "chmod", id: image.id,
            label: `Permissions of ${image.id} (octal)`, value: image.permissions })}>Chmod</button>
        <button type="button" class="act-delete"
          onClick={() => onAsk({ kind: "delete", id: image.id,
            label: `Delete image ${image.id}? Type its name`, value: "" , name: image.name })}>
          Delete</button>
      </td>
    </tr>
  );
}

function Images({ session, onSignOut, onExpired }) {
  const [images, setImages] = useState(null);
  const [datastores, setDatastores] = useState([]);
  const [progress, setProgress] = useState({});
  const [error, setError] = useState("");
  const [ask, setAsk] = useState(null);
  const [details, setDetails] = useState(null);
  const [tab, setTab] = useState("file");
  const tick = useRef(0);

  const refresh = useCallback(async () => {
    const mine = ++tick.current;
    try {
      const list = parseImagePool(await call("one.imagepool.info", secret(session), -2, -1, -1));
      if (mine !== tick.current) return;
      setImages(list);
      if (list.some((i) => i.state.startsWith("LOCKED"))) {
        const res = await fetch("/api/progress", { headers: { Authorization: basicAuth(secret(session)) },
          cache: "no-store", credentials: "omit" });
        setProgress(res.ok ? await res.json() : {});
      } else {
        setProgress({});
      }
    } catch (err) {
      if (err.code === AUTHENTICATION) onExpired(message(err));
      else setError(message(err));
    }
  }, [session]);

  useEffect(() => {
    let timer;
    const loop = async () => { await refresh(); timer = setTimeout(loop, REFRESH_MS); };
    loop();
    call("one.datastorepool.info", secret(session))
      .then((xml) => setDatastores(parseImageDatastores(xml)))
      .catch((err) => setError(message(err)));
    return () => clearTimeout(timer);
  }, [refresh]);

  const showDetails = useCallback(async (id) => {
    try {
      setDetails(parseImageInfo(await call("one.image.info", secret(session), id)));
    } catch (err) {
      setError(message(err));
    }
  }, [session]);
  // open details follow the list's refreshes
  useEffect(() => { if (details) showDetails(details.id); }, [images]);

  const act = async (method, ...args) => {
    setError("");
    try {
      await call(method, secret(session), ...args);
    } catch (err) {
      setError(message(err));
    }
    refresh();
  };
  const answer = async (value) => {
    const a = ask;
    setAsk(null);
    if (a.kind === "rename") await act("one.image.rename", a.id, value);
    else if (a.kind === "clone") await act("one.image.clone", a.id, value);
    else if (a.kind === "delete") {
      if (value === a.name) await act("one.image.delete", a.id, false);
      else setError(`Not deleted: the name typed was not ${a.name}`);
    } else if (a.kind === "chmod") {
      const bits = chmodArgs(value.trim());
      if (bits) await act("one.image.chmod", a.id, ...bits);
      else setError("Permissions are three octal digits, e.g. 640");
    }
  };
  const created = () => { setError(""); refresh(); };

  return (
    <main>
      <header class="top">
        <h1>Images</h1>
        <span id="whoami">{session.user}</span>
        <button type="button" id="signout" onClick={onSignOut}>Sign out</button>
      </header>
      {error && (
        <p id="error" class="error banner" role="alert">{error}
          <button type="button" class="close" onClick={() => setError("")}>×</button></p>
      )}
      <nav class="tabs">
        {[["file", "From a file"], ["url", "From a URL"], ["datablock", "Empty datablock"]].map(
          ([k, label]) => <button type="button" id={`tab-${k}`} class={tab === k ? "on" : ""}
            onClick={() => setTab(k)}>{label}</button>)}
      </nav>
      {/* kept mounted: an upload in progress must not stop when another tab is shown */}
      <div hidden={tab !== "file"}>
        <FileUploads session={session} datastores={datastores} onCreated={created} />
      </div>
      {tab === "url" &&
        <UrlForm session={session} datastores={datastores} onCreated={created} onError={setError} />}
      {tab === "datablock" &&
        <DatablockForm session={session} datastores={datastores} onCreated={created}
          onError={setError} />}
      {ask && <Ask key={`${ask.kind}-${ask.id}`} ask={ask} onDone={answer} onCancel={() => setAsk(null)} />}
      {details && <Details image={details} onClose={() => setDetails(null)} />}
      <section class="card">
        <table id="images" class="images">
          <thead><tr>
            <th>ID</th><th>Name</th><th>Owner</th><th>Datastore</th><th>Size</th><th>Type</th>
            <th>Persistent</th><th>State</th><th>Running VMs</th><th>Actions</th>
          </tr></thead>
          <tbody>
            {images && images.map((img) => (
              <ImageRow key={img.id} image={img} progress={progress} act={act}
                onAsk={setAsk} onDetails={showDetails} />))}
          </tbody>
        </table>
        {images && images.length === 0 && <p id="no-images">No images.</p>}
        {images === null && <p>Loading…</p>}
      </section>
    </main>
  );
}

function App() {
  const [session, setSession] = useState(loadSession);
  const [reason, setReason] = useState("");
  const expired = (text) => {
    sessionStorage.removeItem(SESSION_KEY);
    setReason(text);
    setSession(null);
  };
  const signOut = async () => {
    const s = session;
    sessionStorage.removeItem(SESSION_KEY);
    setSession(null);
    // revoke the token: valid = 0 removes it from the user's login tokens
    await call("one.user.login", secret(s), s.user, s.token, 0, -1).catch(() => {});
  };
  return session
    ? <Images session={session} onSignOut={signOut} onExpired={expired} />
    : <SignIn onSignedIn={(s) => { setReason(""); setSession(s); }} reason={reason} />;
}

render(<App />, document.getElementById("app"));
