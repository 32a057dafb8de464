// File uploads with tus-js-client (tus 1.0) to the daemon's /uploads/ endpoint.
// tus-js-client keeps each unfinished upload's URL in localStorage under a
// fingerprint of the file; ours starts with the user's name, so a user resumes only
// their own uploads (the server refuses another user's URL anyway). No credential
// is stored there: the URL needs the Authorization header to be of any use.

import { Upload, defaultOptions } from "tus-js-client";

export const ENDPOINT = "/uploads/";
/** PATCH size: a pause or a cut connection loses at most what this chunk had sent. */
const CHUNK = 32 * 1024 * 1024;

export function basicAuth(session) {
  const bytes = new TextEncoder().encode(session);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return "Basic " + btoa(binary);
}

function prefix(user) {
  return `oned-images/${encodeURIComponent(user)}/`;
}

/** The text the server gave for a failed request, else tus-js-client's message. */
export function uploadError(err) {
  const res = err && err.originalResponse;
  const body = res && res.getBody && res.getBody();
  if (body) return `HTTP ${res.getStatus()}: ${body}`;
  return String((err && err.message) || err);
}

/**
 * Start (or resume, when this browser holds an unfinished upload of the same file for
 * this user) an upload. Returns the tus Upload, whose abort()/start() pause and resume.
 */
export async function startUpload(file, { session, user, metadata, onProgress, onError,
  onSuccess, onResume }) {
  let imageId = null;
  const upload = new Upload(file, {
    endpoint: new URL(ENDPOINT, window.location.href).href,
    headers: { Authorization: basicAuth(session) },
    metadata: { filename: file.name, ...metadata },
    chunkSize: CHUNK,
    retryDelays: [0, 1000, 3000, 5000],
    removeFingerprintOnSuccess: true,
    fingerprint: async (f, options) => prefix(user) + (await defaultOptions.fingerprint(f, options)),
    onProgress,
    onAfterResponse: (_req, res) => {
      const id = res.getHeader("X-One-Image-Id");
      if (id) imageId = parseInt(id, 10);
    },
    onError: (err) => onError(uploadError(err)),
    onSuccess: () => onSuccess(imageId),
  });
  const previous = await upload.findPreviousUploads();
  if (previous.length) {
    upload.resumeFromPreviousUpload(previous[0]);
    onResume(previous[0]);
  }
  upload.start();
  return upload;
}

/** Unfinished uploads this browser started for ``user`` (they resume when the file is given again). */
export async function unfinishedUploads(user) {
  const all = await defaultOptions.urlStorage.findAllUploads();
  return all.filter((u) => u.urlStorageKey.startsWith(`tus::${prefix(user)}`));
}

/** Forget an unfinished upload: terminate it on the server and drop its stored URL. */
export async function forgetUpload(entry, session) {
  try {
    await Upload.terminate(entry.uploadUrl, { headers: { Authorization: basicAuth(session) } });
  } finally {
    await defaultOptions.urlStorage.removeUpload(entry.urlStorageKey);
  }
}
