/**
 * A strict XML parser that builds an xmlbuilder2 document in one pass. xmlbuilder2's own reader
 * is lenient (it accepts mismatched closing tags, text outside the root, duplicate attributes)
 * and slow; a domain that libvirt would reject must fail here with a message that says where,
 * not later inside virt-launcher. DOCTYPE is refused: libvirt needs none and it invites entity
 * expansion.
 */
import { create } from 'xmlbuilder2';
import type { XMLBuilder } from 'xmlbuilder2/lib/interfaces.js';
import type { Document, Element, Node } from '@oozcitak/dom/lib/dom/interfaces.js';
import { ConvertError } from './errors.js';

const XML_NS = 'http://www.w3.org/XML/1998/namespace';
const XMLNS_NS = 'http://www.w3.org/2000/xmlns/';

const NAME = '[A-Za-z_][-A-Za-z0-9_.\\u00B7-\\uFFFF]*(?::[A-Za-z_][-A-Za-z0-9_.\\u00B7-\\uFFFF]*)?';
const START_TAG = new RegExp(`<(${NAME})`, 'y');
const ATTRIBUTE = new RegExp(`\\s+(${NAME})\\s*=\\s*(?:"([^"]*)"|'([^']*)')`, 'y');
const TAG_END = /\s*(\/?)>/y;
const END_TAG = new RegExp(`</(${NAME})\\s*>`, 'y');
const REFERENCE = /&(?:(lt|gt|amp|quot|apos)|#([0-9]+)|#x([0-9a-fA-F]+));/y;
const NAMED: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function lineCol(text: string, pos: number): string {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf('\n'); i !== -1 && i < pos; i = text.indexOf('\n', i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return `line ${line}, column ${pos - lineStart + 1}`;
}

export interface ParsedXml {
  builder: XMLBuilder;
  doc: Document;
  root: Element;
}

/** Parses `xml` strictly; throws ConvertError naming the first problem and its position. */
export function parseXmlStrict(xml: string, what = 'domain XML'): ParsedXml {
  const fail = (pos: number, rule: string): never => {
    throw new ConvertError([`${what}: not well-formed XML at ${lineCol(xml, pos)}: ${rule}`]);
  };
  /** Text of xml[from, to) with references resolved. */
  const decode = (from: number, to: number): string => {
    let amp = xml.indexOf('&', from);
    if (amp === -1 || amp >= to) return xml.slice(from, to);
    let out = '';
    let at = from;
    for (; amp !== -1 && amp < to; amp = xml.indexOf('&', at)) {
      REFERENCE.lastIndex = amp;
      const m = REFERENCE.exec(xml);
      if (!m || REFERENCE.lastIndex > to) return fail(amp, 'an "&" must start a character or predefined entity reference such as &amp;');
      const code = m[2] !== undefined ? Number(m[2]) : m[3] !== undefined ? parseInt(m[3], 16) : undefined;
      if (code !== undefined && (code === 0 || code > 0x10ffff)) fail(amp, `character reference ${m[0]} is not a valid character`);
      out += xml.slice(at, amp) + (code !== undefined ? String.fromCodePoint(code) : (NAMED[m[1] ?? ''] ?? ''));
      at = REFERENCE.lastIndex;
    }
    return out + xml.slice(at, to);
  };

  const builder = create();
  const doc = builder.node as Document;
  // Open elements with their in-scope namespace bindings (prefix -> URI, '' for the default).
  const open: Array<{ el: Element; name: string; pos: number; ns: Map<string, string | null> }> = [];
  let scope = new Map<string, string | null>([['xml', XML_NS]]);
  let root: Element | undefined;
  const bom = xml.charCodeAt(0) === 0xfeff ? 1 : 0;
  let pos = bom;
  const parent = (): Node => open[open.length - 1]?.el ?? doc;

  while (pos < xml.length) {
    const lt = xml.indexOf('<', pos);
    const textEnd = lt === -1 ? xml.length : lt;
    if (textEnd > pos) {
      if (open.length === 0) {
        const stray = xml.slice(pos, textEnd).search(/\S/);
        if (stray !== -1) fail(pos + stray, root === undefined ? 'text before the root element' : 'text after the root element');
      } else parent().appendChild(doc.createTextNode(decode(pos, textEnd)));
    }
    if (lt === -1) break;
    pos = lt;
    if (xml.startsWith('<?', pos)) {
      const end = xml.indexOf('?>', pos + 2);
      if (end === -1) fail(pos, 'processing instruction is never closed with "?>"');
      const body = xml.slice(pos + 2, end);
      const target = /^\S+/.exec(body)?.[0] ?? '';
      if (target.toLowerCase() === 'xml') {
        if (pos !== bom) fail(pos, 'the XML declaration must come first');
      } else if (target) {
        parent().appendChild(doc.createProcessingInstruction(target, body.slice(target.length).trim()));
      }
      pos = end + 2;
    } else if (xml.startsWith('<!--', pos)) {
      const end = xml.indexOf('-->', pos + 4);
      if (end === -1) fail(pos, 'comment is never closed with "-->"');
      parent().appendChild(doc.createComment(xml.slice(pos + 4, end)));
      pos = end + 3;
    } else if (xml.startsWith('<![CDATA[', pos)) {
      if (open.length === 0) fail(pos, 'CDATA outside the root element');
      const end = xml.indexOf(']]>', pos + 9);
      if (end === -1) fail(pos, 'CDATA section is never closed with "]]>"');
      parent().appendChild(doc.createCDATASection(xml.slice(pos + 9, end)));
      pos = end + 3;
    } else if (xml.startsWith('<!', pos)) {
      fail(pos, 'DOCTYPE and other declarations are not allowed');
    } else if (xml.startsWith('</', pos)) {
      END_TAG.lastIndex = pos;
      const m = END_TAG.exec(xml);
      if (!m) fail(pos, 'malformed closing tag');
      const name = m?.[1] ?? '';
      const top = open.pop();
      if (!top) fail(pos, `closing tag </${name}> without an opening tag`);
      else if (top.name !== name) fail(pos, `closing tag </${name}> does not match <${top.name}> opened at ${lineCol(xml, top.pos)}`);
      scope = open[open.length - 1]?.ns ?? new Map([['xml', XML_NS]]);
      pos = END_TAG.lastIndex;
    } else {
      START_TAG.lastIndex = pos;
      const m = START_TAG.exec(xml);
      if (!m) fail(pos, 'a "<" that does not start a tag (write &lt;)');
      const name = m?.[1] ?? '';
      if (open.length === 0 && root !== undefined) fail(pos, `a second root element <${name}> after <${root.nodeName}>`);
      let at = START_TAG.lastIndex;
      const attrs: Array<{ name: string; value: string; pos: number }> = [];
      for (;;) {
        ATTRIBUTE.lastIndex = at;
        const a = ATTRIBUTE.exec(xml);
        if (!a) break;
        const attr = a[1] ?? '';
        if (attrs.some((x) => x.name === attr)) fail(at, `attribute "${attr}" appears twice on <${name}>`);
        const raw = a[2] ?? a[3] ?? '';
        const valueStart = ATTRIBUTE.lastIndex - raw.length - 1;
        if (raw.includes('<')) fail(valueStart, `attribute "${attr}" contains "<" (write &lt;)`);
        attrs.push({ name: attr, value: decode(valueStart, valueStart + raw.length), pos: at });
        at = ATTRIBUTE.lastIndex;
      }
      TAG_END.lastIndex = at;
      const end = TAG_END.exec(xml);
      if (!end) fail(at, `malformed attribute or unterminated tag <${name}>`);

      const decls = attrs.filter((a) => a.name === 'xmlns' || a.name.startsWith('xmlns:'));
      if (decls.length) {
        scope = new Map(scope);
        for (const d of decls) scope.set(d.name === 'xmlns' ? '' : d.name.slice(6), d.value === '' ? null : d.value);
      }
      const nsOf = (qname: string, forElement: boolean, p: number): string | null => {
        const colon = qname.indexOf(':');
        if (colon === -1) return forElement ? (scope.get('') ?? null) : null;
        const prefix = qname.slice(0, colon);
        const uri = scope.get(prefix);
        if (!uri) return fail(p, `namespace prefix "${prefix}" of ${forElement ? `<${qname}>` : `attribute "${qname}"`} is not declared`);
        return uri;
      };
      const el = doc.createElementNS(nsOf(name, true, pos), name);
      for (const a of attrs) {
        if (a.name === 'xmlns' || a.name.startsWith('xmlns:')) el.setAttributeNS(XMLNS_NS, a.name, a.value);
        else if (a.name.includes(':')) el.setAttributeNS(nsOf(a.name, false, a.pos), a.name, a.value);
        else el.setAttribute(a.name, a.value);
      }
      parent().appendChild(el);
      if (open.length === 0) root = el;
      if (end?.[1] !== '/') open.push({ el, name, pos, ns: scope });
      else scope = open[open.length - 1]?.ns ?? new Map([['xml', XML_NS]]);
      pos = TAG_END.lastIndex;
    }
  }
  const unclosed = open.pop();
  if (unclosed) fail(unclosed.pos, `<${unclosed.name}> is never closed`);
  if (root === undefined) return fail(xml.length, 'no root element');
  return { builder, doc, root };
}
