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
/** The converter's notion of indentation (see dropIgnorableWhitespace in index.ts). */
const IGNORABLE_WHITESPACE = /^\s*$/;

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
  /*
   * Indentation between elements is dropped here rather than built and removed later: the
   * converter's pretty printer re-indents anyway, and those text nodes were a large share of
   * the DOM work. The rule: a whitespace-only text node goes when its parent has an element
   * child (the converter applies it once more, only to the elements it gives children). Per
   * open element: whether it has an element child yet, and the whitespace-only text nodes
   * appended before the first one (removed when it arrives).
   */
  const hasElementChild: boolean[] = [false];
  const pendingBlank: Array<Node[] | undefined> = [undefined];

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
    const p = parent();
    const top = open.length - 1;
    if (!hasElementChild[top]) {
      hasElementChild[top] = true;
      for (const blank of pendingBlank[top] ?? []) p.removeChild(blank);
      pendingBlank[top] = undefined;
    }
    p.appendChild(el);
    root ??= el;
    open.push(el);
    hasElementChild.push(false);
    pendingBlank.push(undefined);
  });
  parser.on('closetag', () => {
    open.pop();
    hasElementChild.pop();
    pendingBlank.pop();
  });
  parser.on('text', (text) => {
    if (open.length <= 1) return;
    const top = open.length - 1;
    const blank = IGNORABLE_WHITESPACE.test(text);
    if (blank && hasElementChild[top]) return;
    const node = parent().appendChild(doc.createTextNode(text));
    if (blank) (pendingBlank[top] ??= []).push(node);
  });
  parser.on('cdata', (text) => parent().appendChild(doc.createCDATASection(text)));
  parser.on('comment', (text) => parent().appendChild(doc.createComment(text)));
  parser.on('processinginstruction', (pi) => parent().appendChild(doc.createProcessingInstruction(pi.target, pi.body)));

  parser.write(xml).close();
  if (root === undefined) return fail('no root element');
  return { builder, doc, root };
}
