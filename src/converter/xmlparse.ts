/**
 * A strict XML reader (saxes) that builds an xmlbuilder2 document. xmlbuilder2's own reader is
 * lenient (it accepts mismatched closing tags, text outside the root, duplicate attributes): a
 * domain that libvirt would reject must fail here with a message that says where, not later
 * inside virt-launcher. DOCTYPE is refused: libvirt needs none and it invites entity tricks.
 */
import { SaxesParser } from 'saxes';
import { create } from 'xmlbuilder2';
import type { XMLBuilder } from 'xmlbuilder2/lib/interfaces.js';
import type { Document, Element, Node } from '@oozcitak/dom/lib/dom/interfaces.js';
import { ConvertError } from './errors.js';

export interface ParsedXml {
  builder: XMLBuilder;
  doc: Document;
  root: Element;
}

/** A libvirt domain is about 6 levels deep; this bounds hostile input well above that. */
const MAX_DEPTH = 256;

/** Parses `xml` strictly; throws ConvertError naming the first problem and its position. */
export function parseXmlStrict(xml: string, what = 'domain XML'): ParsedXml {
  const builder = create();
  const doc = builder.node as Document;
  const parser = new SaxesParser({ xmlns: true, position: true });
  const fail = (rule: string): never => {
    throw new ConvertError([`${what}: not well-formed XML at line ${parser.line}, column ${parser.column + 1}: ${rule}`]);
  };
  const open: Node[] = [doc];
  const parent = (): Node => open[open.length - 1] ?? doc;
  let root: Element | undefined;

  // saxes prefixes its messages with "line:column: "; ours carry the position already.
  parser.on('error', (e) => fail(e.message.replace(/^\d+:\d+: /, '')));
  parser.on('doctype', () => fail('DOCTYPE and other declarations are not allowed'));
  parser.on('opentag', (tag) => {
    // The DOM and the serializer recurse per level: deep nesting would overflow the stack.
    if (open.length > MAX_DEPTH) fail(`elements nested deeper than ${MAX_DEPTH} levels`);
    const el = doc.createElementNS(tag.uri || null, tag.name);
    // setAttribute is much cheaper than setAttributeNS in this DOM; only namespaced ones need NS.
    for (const a of Object.values(tag.attributes)) {
      if (a.uri) el.setAttributeNS(a.uri, a.name, a.value);
      else el.setAttribute(a.name, a.value);
    }
    parent().appendChild(el);
    root ??= el;
    open.push(el);
  });
  parser.on('closetag', () => {
    open.pop();
  });
  parser.on('text', (text) => {
    if (open.length > 1) parent().appendChild(doc.createTextNode(text));
  });
  parser.on('cdata', (text) => parent().appendChild(doc.createCDATASection(text)));
  parser.on('comment', (text) => parent().appendChild(doc.createComment(text)));
  parser.on('processinginstruction', (pi) => parent().appendChild(doc.createProcessingInstruction(pi.target, pi.body)));

  parser.write(xml).close();
  if (root === undefined) return fail('no root element');
  return { builder, doc, root };
}
