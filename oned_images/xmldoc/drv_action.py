"""The DS_DRIVER_ACTION_DATA document handed to driver scripts (drivers.md §2).

``<DS_DRIVER_ACTION_DATA>`` + IMAGE + DATASTORE + extra, base64 on one line.
Stock scripts pass the base64 through argv to xpath.rb, which Linux caps at
128 KiB per argument, so a huge datastore IMAGES list (read by no script) is
trimmed to keep the document under that size.
"""

from __future__ import annotations

import base64
import re

from oned_images.model.objects import Datastore, Image
from oned_images.template import cdata
from oned_images.xmldoc.datastore import datastore_xml
from oned_images.xmldoc.image import image_xml

MAX_B64 = 120 * 1024
_IMAGES = re.compile(r"<IMAGES>.*?</IMAGES>")


def encode(xml: str) -> str:
    return base64.b64encode(xml.encode("utf-8")).decode("ascii")


def action_data(image: Image | None, ds: Datastore, extra: str = "",
                image_xml_text: str | None = None) -> str:
    img = image_xml_text if image_xml_text is not None else (
        image_xml(image) if image is not None else "")
    ds_text = datastore_xml(ds)
    doc = f"<DS_DRIVER_ACTION_DATA>{img}{ds_text}{extra}</DS_DRIVER_ACTION_DATA>"
    if len(doc) * 4 // 3 > MAX_B64:
        ds_text = _IMAGES.sub("<IMAGES></IMAGES>", ds_text, count=1)
        doc = f"<DS_DRIVER_ACTION_DATA>{img}{ds_text}{extra}</DS_DRIVER_ACTION_DATA>"
    return encode(doc)


def stat_data(path: str, ds: Datastore) -> str:
    """STAT gets only the PATH of the would-be image."""
    return action_data(None, ds, image_xml_text=f"<IMAGE><PATH>{cdata(path)}</PATH></IMAGE>")
