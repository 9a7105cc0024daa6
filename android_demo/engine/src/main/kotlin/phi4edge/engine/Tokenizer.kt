package phi4edge.engine

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.stream.JsonReader
import com.google.gson.stream.JsonToken
import java.io.File
import java.io.FileInputStream
import java.io.IOException
import java.io.InputStreamReader
import java.io.Reader
import java.util.concurrent.ConcurrentHashMap
import java.util.regex.Pattern

/**
 * Hugging Face `tokenizers` byte-level BPE, as Phi-4 uses it, in plain Kotlin (JVM and Android).
 *
 * It behaves as the Python runtime's `ChatTokenizer` (runtime/tokenizer.py) does:
 * - [encode] is `encode_text`: plain text, where special-token strings such as "<|user|>" stay
 *   ordinary text (tokenizers with `encode_special_tokens = True`, no post-processing);
 * - [decode] is `decode`: ids outside `0 until vocabSize` dropped, special tokens skipped, bytes
 *   decoded as UTF-8 with U+FFFD for broken sequences (as Rust's `from_utf8_lossy`);
 * - [TextStream.push] is `TextStream.step` (tokenizers' `DecodeStream`, skip_special_tokens).
 *
 * tokenizer.json shapes read (anything else is refused with an [IllegalArgumentException] naming
 * the field): model BPE (no dropout, subword prefix/suffix, byte_fallback or ignore_merges;
 * unk_token optional; merges as "a b" strings or [a, b] pairs); pre_tokenizer either ByteLevel
 * (add_prefix_space false, use_regex true: the GPT-2 regex) or Sequence[Split(Regex, Isolated,
 * invert false), ByteLevel(add_prefix_space false, use_regex false)] (Phi-4-mini's o200k form);
 * decoder ByteLevel; normalizer, truncation and padding null; post_processor null or ByteLevel;
 * added tokens all special. Regexes are Oniguruma's (what `tokenizers` compiles them with),
 * translated to java.util.regex without flags, so Android's ICU-backed Pattern reads them too.
 *
 * Thread-safe after [load].
 */
class BpeTokenizer private constructor(
    private val splitter: Pattern,
    private val merges: MergeTable,
    /** byte value -> id of its byte-level token, -1 if the vocabulary lacks it */
    private val byteIds: IntArray,
    private val unkId: Int,
    private val fuseUnk: Boolean,
    /** id -> token text (added tokens win over the model's), null for ids without a token */
    private val tokens: Array<String?>,
    /** ids whose token is a special token: skipped by decoding */
    private val special: BooleanArray,
    private val added: Map<String, Int>,
    /** the Python runtime's vocab_size: distinct tokens of the model and the added tokens */
    val vocabSize: Int,
) {
    private val cache = ConcurrentHashMap<String, IntArray>()

    /** Token ids of plain text (special-token strings in it are ordinary text). */
    fun encode(text: String): IntArray {
        val out = IntList(text.length / 3 + 8)
        split(text) { start, end -> encodePiece(text, start, end, out) }
        return out.toArray()
    }

    /** The pre-tokenizer's pieces, byte-level characters as tokenizers shows them (for tests). */
    internal fun pieces(text: String): List<String> {
        val out = ArrayList<String>()
        split(text) { start, end -> out.add(utf8(text.substring(start, end)).map { BYTES_CHAR[it.toInt() and 0xFF] }.joinToString("")) }
        return out
    }

    /** tokenizers' Split with behavior Isolated: each match is a piece, and so is each gap. */
    private inline fun split(text: String, piece: (Int, Int) -> Unit) {
        val m = splitter.matcher(text)
        var prev = 0
        while (m.find()) {
            if (m.start() > prev) piece(prev, m.start())
            if (m.end() > m.start()) piece(m.start(), m.end())
            prev = m.end()
        }
        if (prev < text.length) piece(prev, text.length)
    }

    /** The id of a token by its text: added tokens ("<|end|>") first, then the model's vocabulary. */
    fun tokenId(content: String): Int {
        added[content]?.let { return it }
        for (i in tokens.indices) if (tokens[i] == content) return i
        throw IllegalArgumentException("the tokenizer has no token ${quote(content)}")
    }

    /** Text of generated ids: ids outside `0 until vocabSize` and special tokens skipped. */
    fun decode(ids: IntArray): String {
        val buf = ByteList(ids.size * 4)
        for (id in ids) if (id in 0 until vocabSize) appendBytes(id, buf)
        return utf8Lossy(buf.data, buf.size)
    }

    internal fun decodeRaw(ids: IntList, from: Int): String {
        val buf = ByteList((ids.size - from) * 4)
        for (i in from until ids.size) appendBytes(ids[i], buf)
        return utf8Lossy(buf.data, buf.size)
    }

    /** tokenizers' ByteLevel decoder: a token's characters mapped back to bytes, or its UTF-8
     *  bytes when some character is not a byte-level one. */
    private fun appendBytes(id: Int, buf: ByteList) {
        if (id >= tokens.size || special[id]) return
        val t = tokens[id] ?: return
        val start = buf.size
        for (ch in t) {
            val c = ch.code
            val b = if (c < CHAR_BYTES.size) CHAR_BYTES[c] else -1
            if (b < 0) {
                buf.size = start
                buf.addAll(t.toByteArray(Charsets.UTF_8))
                return
            }
            buf.add(b.toByte())
        }
    }

    private fun encodePiece(text: String, start: Int, end: Int, out: IntList) {
        val piece = text.substring(start, end)
        val hit = cache[piece]
        if (hit != null) {
            out.addAll(hit)
            return
        }
        val ids = bpe(utf8(piece))
        if (piece.length <= MAX_CACHED_LENGTH) {
            if (cache.size >= CACHE_CAPACITY) cache.clear()
            cache[piece] = ids
        }
        out.addAll(ids)
    }

    /** tokenizers' BPE::merge_word + Word::merge_all: one symbol per byte, then the pair of lowest
     *  rank (leftmost among equals) merged until none is left. */
    private fun bpe(bytes: ByteArray): IntArray {
        val sym = IntArray(bytes.size)
        var n = 0
        var unk = -1   // a pending unknown symbol (only with unk_token)
        for (b in bytes) {
            val id = byteIds[b.toInt() and 0xFF]
            if (id >= 0) {
                if (unk >= 0) { sym[n++] = unk; unk = -1 }
                sym[n++] = id
            } else if (unkId >= 0) {
                if (unk >= 0 && !fuseUnk) sym[n++] = unk
                unk = unkId
            }
        }
        if (unk >= 0) sym[n++] = unk
        if (n < 2) return sym.copyOf(n)
        val next = IntArray(n) { if (it + 1 < n) it + 1 else -1 }
        val prev = IntArray(n) { it - 1 }
        val heap = LongHeap(n)
        for (i in 0 until n - 1) {
            val r = merges.rank(sym[i], sym[i + 1])
            if (r >= 0) heap.push((r.toLong() shl 32) or i.toLong())
        }
        var alive = n
        while (heap.size > 0) {
            val top = heap.pop()
            val rank = (top ushr 32).toInt()
            val pos = top.toInt()
            if (sym[pos] < 0) continue
            val nx = next[pos]
            if (nx < 0) continue
            val slot = merges.find(sym[pos], sym[nx])
            if (slot < 0 || merges.rankAt(slot) != rank) continue   // an expired entry
            sym[pos] = merges.idAt(slot)
            sym[nx] = -1
            alive--
            val after = next[nx]
            next[pos] = after
            if (after >= 0) prev[after] = pos
            val p = prev[pos]
            if (p >= 0) {
                val r = merges.rank(sym[p], sym[pos])
                if (r >= 0) heap.push((r.toLong() shl 32) or p.toLong())
            }
            if (after >= 0) {
                val r = merges.rank(sym[pos], sym[after])
                if (r >= 0) heap.push((r.toLong() shl 32) or pos.toLong())
            }
        }
        val out = IntArray(alive)
        var k = 0
        var i = 0
        while (i >= 0) { out[k++] = sym[i]; i = next[i] }
        return out
    }

    companion object {
        private const val CACHE_CAPACITY = 50_000
        private const val MAX_CACHED_LENGTH = 128
        private const val MAX_ID = (1 shl 24) - 1
        private val ELEMENTS = com.google.gson.Gson().getAdapter(JsonElement::class.java)

        /** GPT-2's pre-tokenizer regex, ByteLevel's with use_regex true (tokenizers' byte_level.rs). */
        private const val GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

        /** Read a tokenizer.json (streamed: a real vocabulary has 200K tokens). */
        @JvmStatic
        fun load(tokenizerJson: File): BpeTokenizer {
            val reader = try {
                InputStreamReader(FileInputStream(tokenizerJson), Charsets.UTF_8).buffered(1 shl 16)
            } catch (e: IOException) {
                throw IllegalArgumentException("$tokenizerJson: unreadable (${e.message})")
            }
            return reader.use { parse(it, tokenizerJson.path) }
        }

        /** Read tokenizer.json text from a reader; `name` prefixes error messages. */
        @JvmStatic
        fun parse(reader: Reader, name: String): BpeTokenizer {
            try {
                return Loader(name).read(JsonReader(reader))
            } catch (e: TokenizerFormatError) {
                throw IllegalArgumentException("$name: ${e.message}")
            } catch (e: IOException) {
                throw IllegalArgumentException("$name: not a valid tokenizer.json (${oneLine(e.message)})")
            } catch (e: IllegalStateException) {   // Gson: a value of the wrong JSON type
                throw IllegalArgumentException("$name: not a valid tokenizer.json (${oneLine(e.message)})")
            } catch (e: com.google.gson.JsonParseException) {
                throw IllegalArgumentException("$name: not a valid tokenizer.json (${oneLine(e.message)})")
            }
        }

        private fun oneLine(s: String?): String =
            (s ?: "").lineSequence().first().replace(Regex("^Use JsonReader\\.set\\w+\\([^)]*\\) to accept "), "").take(200)

        private class Loader(val name: String) {
            var vocab: HashMap<String, Int>? = null
            val pendingMerges = ArrayList<Array<String>>()
            val mergeTable = MergeTable()
            var mergeRank = 0
            var mergeForm = 0   // 1: "a b" strings, 2: [a, b] pairs
            var sawModel = false
            var sawMerges = false
            var unkToken: String? = null
            var fuseUnk = false
            var preTokenizer: JsonElement? = null
            var decoder: JsonElement? = null
            val addedTokens = ArrayList<Pair<String, Boolean>>()

            /** One JSON value as a tree, read as strictly as the rest (JsonParser would read leniently). */
            fun tree(r: JsonReader): JsonElement = ELEMENTS.read(r)

            fun read(r: JsonReader): BpeTokenizer {
                if (r.peek() != JsonToken.BEGIN_OBJECT) fail("(top level)", "must be a JSON object")
                r.beginObject()
                while (r.hasNext()) {
                    when (val key = r.nextName()) {
                        "version" -> {
                            val v = tree(r)
                            if (!(v.isJsonPrimitive && v.asJsonPrimitive.isString && v.asString == "1.0"))
                                fail("version", "$v is not a known tokenizer.json version (\"1.0\")")
                        }
                        "truncation", "padding", "normalizer" -> {
                            val v = tree(r)
                            if (!v.isJsonNull) fail(key, "must be null (phi4edge reads byte-level BPE without it), not ${short(v)}")
                        }
                        "post_processor" -> {
                            val v = tree(r)
                            // ByteLevel only trims offsets: ids are the same
                            if (!v.isJsonNull && typeOf(v) != "ByteLevel")
                                fail(key, "must be null or ByteLevel, not ${short(v)}")
                        }
                        "pre_tokenizer" -> preTokenizer = tree(r)
                        "decoder" -> decoder = tree(r)
                        "added_tokens" -> readAddedTokens(tree(r))
                        "model" -> readModel(r)
                        else -> r.skipValue()
                    }
                }
                r.endObject()
                if (r.peek() != JsonToken.END_DOCUMENT) fail("(top level)", "text after the JSON object")
                return build()
            }

            fun readAddedTokens(v: JsonElement) {
                if (v.isJsonNull) return
                if (!v.isJsonArray) fail("added_tokens", "must be a list")
                addedTokens.clear()
                v.asJsonArray.forEachIndexed { i, t ->
                    val field = "added_tokens[$i]"
                    if (!t.isJsonObject) fail(field, "must be an object")
                    val o = t.asJsonObject
                    val content = o.get("content")
                    if (content == null || !content.isJsonPrimitive || !content.asJsonPrimitive.isString)
                        fail("$field.content", "must be a string")
                    nonNegativeInt(o.get("id"), "$field.id", Int.MAX_VALUE.toLong() * 2 + 1)
                    val special = o.get("special")
                    if (special != null && !special.isJsonNull && !(special.isJsonPrimitive && special.asJsonPrimitive.isBoolean))
                        fail("$field.special", "must be true or false")
                    val isSpecial = special != null && !special.isJsonNull && special.asBoolean
                    if (!isSpecial)
                        fail("$field.special", "${quote(content.asString)} is not special: phi4edge reads only special added tokens (never matched in user text)")
                    addedTokens.add(content.asString to true)
                }
            }

            fun readModel(r: JsonReader) {
                if (r.peek() != JsonToken.BEGIN_OBJECT) fail("model", "must be an object")
                sawModel = true
                vocab = null
                pendingMerges.clear()
                mergeTable.clear()
                mergeRank = 0
                mergeForm = 0
                sawMerges = false
                var type: String? = null
                r.beginObject()
                while (r.hasNext()) {
                    when (val key = r.nextName()) {
                        "type" -> type = tree(r).let { if (it.isJsonPrimitive) it.asString else it.toString() }
                        "dropout" -> {
                            val v = tree(r)
                            if (!v.isJsonNull) fail("model.dropout", "must be null, not ${short(v)} (phi4edge encodes deterministically)")
                        }
                        "continuing_subword_prefix", "end_of_word_suffix" -> {
                            val v = tree(r)
                            if (!v.isJsonNull) fail("model.$key", "must be null, not ${short(v)}")
                        }
                        "byte_fallback", "ignore_merges" -> {
                            val v = tree(r)
                            if (!v.isJsonNull && !(v.isJsonPrimitive && v.asJsonPrimitive.isBoolean && !v.asBoolean))
                                fail("model.$key", "must be false, not ${short(v)}")
                        }
                        "fuse_unk" -> {
                            val v = tree(r)
                            if (!v.isJsonNull && !(v.isJsonPrimitive && v.asJsonPrimitive.isBoolean)) fail("model.fuse_unk", "must be true or false")
                            fuseUnk = !v.isJsonNull && v.asBoolean
                        }
                        "unk_token" -> {
                            val v = tree(r)
                            unkToken = when {
                                v.isJsonNull -> null
                                v.isJsonPrimitive && v.asJsonPrimitive.isString -> v.asString
                                else -> fail("model.unk_token", "must be a string or null")
                            }
                        }
                        "vocab" -> readVocab(r)
                        "merges" -> readMerges(r)
                        else -> r.skipValue()
                    }
                }
                r.endObject()
                if (type != "BPE") fail("model.type", "${quote(type ?: "(missing)")} is not supported (only BPE)")
                val v = vocab ?: fail("model.vocab", "missing")
                if (!sawMerges) fail("model.merges", "missing")
                for (m in pendingMerges) addMerge(v, m[0], m[1], m[2].toInt())
                pendingMerges.clear()
            }

            fun readVocab(r: JsonReader) {
                if (r.peek() != JsonToken.BEGIN_OBJECT) fail("model.vocab", "must be an object {token: id}")
                val v = HashMap<String, Int>(1 shl 18)
                r.beginObject()
                while (r.hasNext()) {
                    val token = r.nextName()
                    if (r.peek() != JsonToken.NUMBER) fail("model.vocab", "the id of ${quote(token)} is not a number")
                    val id = try { r.nextLong() } catch (e: NumberFormatException) {
                        fail("model.vocab", "the id of ${quote(token)} is not an integer")
                    }
                    if (id < 0 || id > MAX_ID) fail("model.vocab", "the id of ${quote(token)} ($id) is out of range 0..$MAX_ID")
                    v[token] = id.toInt()
                }
                r.endObject()
                vocab = v
            }

            fun readMerges(r: JsonReader) {
                if (r.peek() != JsonToken.BEGIN_ARRAY) fail("model.merges", "must be a list")
                sawMerges = true
                mergeForm = 0
                mergeRank = 0
                mergeTable.clear()
                pendingMerges.clear()
                var i = 0
                r.beginArray()
                while (r.hasNext()) {
                    val field = "model.merges[$i]"
                    val a: String
                    val b: String
                    when (r.peek()) {
                        JsonToken.STRING -> {
                            if (mergeForm == 2) fail(field, "mixes \"a b\" strings with [a, b] pairs")
                            mergeForm = 1
                            val line = r.nextString()
                            i++
                            if (line.startsWith("#version")) continue
                            val parts = line.split(' ')
                            if (parts.size != 2) fail(field, "${quote(line)} is not two tokens separated by one space")
                            a = parts[0]
                            b = parts[1]
                        }
                        JsonToken.BEGIN_ARRAY -> {
                            if (mergeForm == 1) fail(field, "mixes \"a b\" strings with [a, b] pairs")
                            mergeForm = 2
                            r.beginArray()
                            val pair = ArrayList<String>(2)
                            while (r.hasNext()) {
                                if (r.peek() != JsonToken.STRING || pair.size == 2) fail(field, "must be a pair of token strings")
                                pair.add(r.nextString())
                            }
                            r.endArray()
                            if (pair.size != 2) fail(field, "must be a pair of token strings")
                            i++
                            a = pair[0]
                            b = pair[1]
                        }
                        else -> fail(field, "must be \"a b\" or [a, b]")
                    }
                    val v = vocab
                    if (v != null) addMerge(v, a, b, mergeRank) else pendingMerges.add(arrayOf(a, b, mergeRank.toString()))
                    mergeRank++
                }
                r.endArray()
            }

            fun addMerge(v: Map<String, Int>, a: String, b: String, rank: Int) {
                val ia = v[a] ?: fail("model.merges", "merge #$rank names ${quote(a)}, which is not in the vocabulary")
                val ib = v[b] ?: fail("model.merges", "merge #$rank names ${quote(b)}, which is not in the vocabulary")
                val joined = a + b
                val id = v[joined] ?: fail("model.merges", "merge #$rank makes ${quote(joined)}, which is not in the vocabulary")
                mergeTable.put(ia, ib, rank, id)   // a pair given twice keeps its last rank, as tokenizers does
            }

            fun readPreTokenizer(): Pattern {
                val p = preTokenizer
                if (p == null || p.isJsonNull) fail("pre_tokenizer", "missing (phi4edge reads byte-level BPE)")
                when (typeOf(p)) {
                    "ByteLevel" -> {
                        byteLevel(p.asJsonObject, "pre_tokenizer", useRegex = true)
                        return OnigToJava.compile(GPT2_REGEX, "pre_tokenizer")
                    }
                    "Sequence" -> {
                        val list = p.asJsonObject.get("pretokenizers")
                        if (list == null || !list.isJsonArray || list.asJsonArray.size() != 2)
                            fail("pre_tokenizer.pretokenizers", "must be [Split, ByteLevel] (Phi-4-mini's form)")
                        val items: JsonArray = list.asJsonArray
                        val split = items[0]
                        if (typeOf(split) != "Split") fail("pre_tokenizer.pretokenizers[0].type", "${quote(typeOf(split))} is not supported (only Split then ByteLevel)")
                        val pattern = split(split.asJsonObject, "pre_tokenizer.pretokenizers[0]")
                        if (typeOf(items[1]) != "ByteLevel") fail("pre_tokenizer.pretokenizers[1].type", "${quote(typeOf(items[1]))} is not supported (only Split then ByteLevel)")
                        byteLevel(items[1].asJsonObject, "pre_tokenizer.pretokenizers[1]", useRegex = false)
                        return pattern
                    }
                    else -> fail("pre_tokenizer.type", "${quote(typeOf(p))} is not supported (ByteLevel, or Sequence[Split, ByteLevel])")
                }
            }

            fun byteLevel(o: JsonObject, field: String, useRegex: Boolean) {
                val aps = o.get("add_prefix_space")
                if (aps == null || !(aps.isJsonPrimitive && aps.asJsonPrimitive.isBoolean) || aps.asBoolean)
                    fail("$field.add_prefix_space", "must be false, not ${short(aps)}")
                val ur = o.get("use_regex")
                val actual = if (ur == null || ur.isJsonNull) true
                else if (ur.isJsonPrimitive && ur.asJsonPrimitive.isBoolean) ur.asBoolean
                else fail("$field.use_regex", "must be true or false")
                if (actual != useRegex) fail("$field.use_regex", "must be $useRegex here, not $actual")
            }

            fun split(o: JsonObject, field: String): Pattern {
                val pattern = o.get("pattern")
                if (pattern == null || !pattern.isJsonObject) fail("$field.pattern", "must be {\"Regex\": ...}")
                val regex = pattern.asJsonObject.get("Regex")
                if (regex == null || !regex.isJsonPrimitive || !regex.asJsonPrimitive.isString || pattern.asJsonObject.size() != 1)
                    fail("$field.pattern", "only {\"Regex\": \"...\"} is supported, not ${short(pattern)}")
                val behavior = o.get("behavior")
                if (behavior == null || !behavior.isJsonPrimitive || behavior.asString != "Isolated")
                    fail("$field.behavior", "${short(behavior)} is not supported (only \"Isolated\")")
                val invert = o.get("invert")
                if (invert == null || !(invert.isJsonPrimitive && invert.asJsonPrimitive.isBoolean) || invert.asBoolean)
                    fail("$field.invert", "must be false, not ${short(invert)}")
                return OnigToJava.compile(regex.asString, "$field.pattern.Regex")
            }

            fun build(): BpeTokenizer {
                if (!sawModel) fail("model", "missing")
                val splitter = readPreTokenizer()
                val d = decoder
                if (d == null || d.isJsonNull || typeOf(d) != "ByteLevel")
                    fail("decoder", "must be ByteLevel, not ${short(d)}")
                val v = vocab!!
                // added tokens get their ids as tokenizers' AddedVocabulary::add_tokens gives them
                // (the "id" fields are only checked by tokenizers with a warning)
                val addedIds = LinkedHashMap<String, Int>()
                val specialSet = HashSet<String>()
                var nextId = v.size
                val addedById = HashMap<Int, String>()
                for ((content, isSpecial) in addedTokens) {
                    if (content.isEmpty()) continue
                    val id = addedIds[content] ?: v[content] ?: nextId++
                    addedIds[content] = id
                    if (isSpecial) specialSet.add(content)
                    addedById[id] = content
                }
                var maxId = -1
                for (id in v.values) if (id > maxId) maxId = id
                for (id in addedById.keys) if (id > maxId) maxId = id
                val tokens = arrayOfNulls<String>(maxId + 1)
                for ((t, id) in v) {
                    val before = tokens[id]
                    if (before != null) fail("model.vocab", "id $id is given to both ${quote(before)} and ${quote(t)}")
                    tokens[id] = t
                }
                for ((id, t) in addedById) tokens[id] = t
                val special = BooleanArray(tokens.size) { tokens[it] != null && tokens[it] in specialSet }
                val byteIds = IntArray(256) { v[BYTES_CHAR[it].toString()] ?: -1 }
                val unkId = unkToken?.let { v[it] ?: fail("model.unk_token", "${quote(it)} is not in the vocabulary") } ?: -1
                val vocabSize = v.size + addedIds.keys.count { it !in v }
                vocab = null
                return BpeTokenizer(splitter, mergeTable, byteIds, unkId, fuseUnk, tokens, special, addedIds, vocabSize)
            }
        }

        private fun nonNegativeInt(v: JsonElement?, field: String, max: Long): Long {
            if (v == null || !v.isJsonPrimitive || !v.asJsonPrimitive.isNumber) fail(field, "must be a non-negative integer")
            val n = v.asBigDecimal
            if (n.signum() < 0 || n.stripTrailingZeros().scale() > 0 || n > java.math.BigDecimal.valueOf(max))
                fail(field, "must be a non-negative integer, not $n")
            return n.toLong()
        }

        private fun typeOf(v: JsonElement?): String? {
            if (v == null || !v.isJsonObject) return null
            val t = v.asJsonObject.get("type")
            return if (t != null && t.isJsonPrimitive && t.asJsonPrimitive.isString) t.asString else null
        }

        private fun short(v: JsonElement?): String {
            if (v == null) return "(missing)"
            val s = if (v.isJsonObject && typeOf(v) != null) "type ${typeOf(v)}" else v.toString()
            return if (s.length > 80) s.take(77) + "..." else s
        }

        internal fun fail(field: String, message: String): Nothing = throw TokenizerFormatError("$field: $message")

        internal fun quote(s: String?): String {
            if (s == null) return "null"
            val sb = StringBuilder("\"")
            for (ch in s.take(60)) {
                if (ch < ' ' || ch == '"' || ch == '\\' || ch in '\u007f'..'\u009f') sb.append("\\u%04x".format(ch.code)) else sb.append(ch)
            }
            if (s.length > 60) sb.append("...")
            return sb.append('"').toString()
        }
    }
}

/**
 * Incremental detokenisation, as the Python runtime's `TextStream.step` (tokenizers' DecodeStream
 * with skip_special_tokens): each [push] returns the text that became complete with that id, ""
 * while a multi-byte character is still incomplete (its bytes come out with the id that ends it),
 * and "" for special tokens and ids outside `0 until vocabSize`.
 */
class TextStream(private val tokenizer: BpeTokenizer) {
    private var ids = IntList(16)
    private var prefix = ""
    private var prefixIndex = 0

    fun push(id: Int): String {
        if (id < 0 || id >= tokenizer.vocabSize) return ""
        // tokenizers' step_decode_stream, line for line
        if (prefix.isEmpty() && ids.size > 0) {
            val p = tokenizer.decodeRaw(ids, 0)
            if (!p.endsWith(REPLACEMENT)) {
                prefix = p
                prefixIndex = ids.size
            }
        }
        ids.add(id)
        val string = tokenizer.decodeRaw(ids, 0)
        if (utf8Length(string) > utf8Length(prefix) && !string.endsWith(REPLACEMENT)) {
            check(string.startsWith(prefix)) { "stream decoding: ${string.take(40)} does not start with ${prefix.take(40)}" }
            val newText = string.substring(prefix.length)
            val newPrefixIndex = ids.size - prefixIndex
            val rest = IntList(ids.size - prefixIndex + 8)
            for (i in prefixIndex until ids.size) rest.add(ids[i])
            ids = rest
            prefix = tokenizer.decodeRaw(ids, 0)
            prefixIndex = newPrefixIndex
            return newText
        }
        return ""
    }

    private companion object {
        const val REPLACEMENT = '\uFFFD'
    }
}

internal class TokenizerFormatError(message: String) : Exception(message)

/** GPT-2's byte <-> character table (tokenizers' bytes_char). */
internal val BYTES_CHAR: CharArray = run {
    val out = CharArray(256)
    var n = 0
    for (b in 0..255) {
        val printable = b in '!'.code..'~'.code || b in 0xA1..0xAC || b in 0xAE..0xFF
        out[b] = if (printable) b.toChar() else (256 + n++).toChar()
    }
    out
}

internal val CHAR_BYTES: IntArray = IntArray(324) { -1 }.also { t -> for (b in 0..255) t[BYTES_CHAR[b].code] = b }

/** UTF-8 bytes of a string; an unpaired surrogate becomes U+FFFD (text from Python cannot hold one). */
internal fun utf8(s: String): ByteArray {
    var ascii = true
    for (ch in s) if (ch.code >= 0x80) { ascii = false; break }
    if (ascii) return ByteArray(s.length) { s[it].code.toByte() }
    val out = ByteList(s.length * 3)
    var i = 0
    while (i < s.length) {
        var c = s[i].code
        if (c in 0xD800..0xDBFF && i + 1 < s.length && s[i + 1].code in 0xDC00..0xDFFF) {
            c = 0x10000 + ((c - 0xD800) shl 10) + (s[i + 1].code - 0xDC00)
            i++
        } else if (c in 0xD800..0xDFFF) {
            c = 0xFFFD
        }
        i++
        when {
            c < 0x80 -> out.add(c.toByte())
            c < 0x800 -> { out.add((0xC0 or (c shr 6)).toByte()); out.add((0x80 or (c and 0x3F)).toByte()) }
            c < 0x10000 -> {
                out.add((0xE0 or (c shr 12)).toByte()); out.add((0x80 or ((c shr 6) and 0x3F)).toByte())
                out.add((0x80 or (c and 0x3F)).toByte())
            }
            else -> {
                out.add((0xF0 or (c shr 18)).toByte()); out.add((0x80 or ((c shr 12) and 0x3F)).toByte())
                out.add((0x80 or ((c shr 6) and 0x3F)).toByte()); out.add((0x80 or (c and 0x3F)).toByte())
            }
        }
    }
    return out.data.copyOf(out.size)
}

internal fun utf8Length(s: String): Int {
    var n = 0
    var i = 0
    while (i < s.length) {
        val c = s[i].code
        n += when {
            c < 0x80 -> 1
            c < 0x800 -> 2
            c in 0xD800..0xDBFF && i + 1 < s.length && s[i + 1].code in 0xDC00..0xDFFF -> { i++; 4 }
            else -> 3
        }
        i++
    }
    return n
}

/** UTF-8 decoding with one U+FFFD per maximal invalid subsequence, exactly as Rust's
 *  String::from_utf8_lossy (which tokenizers' ByteLevel decoder uses). */
internal fun utf8Lossy(b: ByteArray, n: Int): String {
    val sb = StringBuilder(n)
    var i = 0
    while (i < n) {
        val c = b[i].toInt() and 0xFF
        if (c < 0x80) { sb.append(c.toChar()); i++; continue }
        val width: Int
        var lo = 0x80
        var hi = 0xBF
        when (c) {
            in 0xC2..0xDF -> width = 2
            0xE0 -> { width = 3; lo = 0xA0 }
            in 0xE1..0xEC, 0xEE, 0xEF -> width = 3
            0xED -> { width = 3; hi = 0x9F }
            0xF0 -> { width = 4; lo = 0x90 }
            in 0xF1..0xF3 -> width = 4
            0xF4 -> { width = 4; hi = 0x8F }
            else -> { sb.append('\uFFFD'); i++; continue }
        }
        if (i + 1 >= n || (b[i + 1].toInt() and 0xFF) !in lo..hi) { sb.append('\uFFFD'); i++; continue }
        var k = 2
        while (k < width && i + k < n && (b[i + k].toInt() and 0xFF) in 0x80..0xBF) k++
        if (k < width) { sb.append('\uFFFD'); i += k; continue }
        var cp = c and (0xFF shr (width + 1))
        for (j in 1 until width) cp = (cp shl 6) or (b[i + j].toInt() and 0x3F)
        sb.appendCodePoint(cp)
        i += width
    }
    return sb.toString()
}

/**
 * Oniguruma (Ruby syntax, UTF-8: what `tokenizers` compiles) to java.util.regex, for the
 * constructs pre-tokenizer patterns use; anything else is refused rather than guessed.
 * Compiled without flags (Android's Pattern takes no UNICODE_CHARACTER_CLASS): `\s` becomes
 * Oniguruma's Unicode whitespace set, `(?i:...)` groups of literals become explicit case classes
 * (Oniguruma folds case by Unicode: 'ſ' matches 's', the Kelvin sign 'k'), `.` stops only at \n.
 */
internal object OnigToJava {
    /** Unicode White_Space: Oniguruma's \s for UTF-8 (checked against tokenizers in the vectors). */
    private const val SPACE = "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
    private val CATEGORIES = setOf(
        "L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
        "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So",
        "Z", "Zs", "Zl", "Zp", "C", "Cc", "Cf", "Co", "Cs", "Cn",
    )

    fun compile(onig: String, field: String): Pattern {
        val java = translate(onig, field)
        return try {
            Pattern.compile(java)
        } catch (e: java.util.regex.PatternSyntaxException) {
            BpeTokenizer.fail(field, "the regex does not compile (${e.description})")
        }
    }

    fun translate(p: String, field: String): String {
        fun bad(what: String): Nothing = BpeTokenizer.fail(field, "unsupported regex construct $what")
        val out = StringBuilder(p.length * 2)
        val groups = ArrayList<Boolean>()   // per open group: case-insensitive?
        var depth = 0   // character class nesting
        var i = 0
        fun ci() = groups.isNotEmpty() && groups.last()
        while (i < p.length) {
            val ch = p[i]
            when {
                ch == '\\' -> {
                    if (i + 1 >= p.length) bad("(a trailing backslash)")
                    val e = p[i + 1]
                    i += 2
                    when (e) {
                        's' -> { if (ci()) bad("\\s inside (?i:)"); out.append(if (depth > 0) SPACE else "[$SPACE]") }
                        'S' -> { if (ci()) bad("\\S inside (?i:)"); out.append("[^$SPACE]") }
                        'p', 'P' -> {
                            if (ci()) bad("\\p inside (?i:)")
                            if (i >= p.length || p[i] != '{') bad("\\$e without {name}")
                            val close = p.indexOf('}', i)
                            if (close < 0) bad("\\$e{ without }")
                            var name = p.substring(i + 1, close)
                            var negate = e == 'P'
                            if (name.startsWith("^")) { negate = !negate; name = name.substring(1) }
                            if (name !in CATEGORIES) bad("\\$e{$name} (only general categories)")
                            out.append(if (negate) "\\P{" else "\\p{").append(name).append('}')
                            i = close + 1
                        }
                        'r', 'n', 't', 'f' -> out.append('\\').append(e)
                        'v' -> out.append("\\x{0B}")
                        'x' -> {
                            val (cp, end) = if (i < p.length && p[i] == '{') {
                                val close = p.indexOf('}', i)
                                if (close < 0) bad("\\x{ without }")
                                p.substring(i + 1, close).toIntOrNull(16) to close + 1
                            } else {
                                var j = i
                                while (j < p.length && j < i + 2 && p[j].isHex()) j++
                                (if (j > i) p.substring(i, j).toInt(16) else null) to j
                            }
                            if (cp == null || cp > 0x10FFFF) bad("\\x escape")
                            literal(cp, out, ci(), depth > 0, ::bad)
                            i = end
                        }
                        'u' -> {
                            if (i + 4 > p.length || !p.substring(i, i + 4).all { it.isHex() }) bad("\\u escape")
                            literal(p.substring(i, i + 4).toInt(16), out, ci(), depth > 0, ::bad)
                            i += 4
                        }
                        else -> {
                            if (e.isLetterOrDigit() || e.code >= 0x80) bad("\\$e")
                            literal(e.code, out, ci(), depth > 0, ::bad)
                        }
                    }
                }
                depth > 0 -> {
                    when (ch) {
                        '[' -> {
                            if (p.startsWith("[:", i)) bad("[: (POSIX bracket)")
                            depth++
                            out.append('[')
                            i++
                            if (i < p.length && p[i] == '^') { out.append('^'); i++ }
                            if (i < p.length && p[i] == ']') bad("] first in a class")
                        }
                        ']' -> { depth--; out.append(']'); i++ }
                        else -> {
                            val cp = p.codePointAt(i)
                            if (cp == '&'.code || cp == '-'.code) out.append(ch) else literal(cp, out, false, true, ::bad)
                            i += Character.charCount(cp)
                        }
                    }
                }
                ch == '[' -> {
                    if (ci()) bad("a character class inside (?i:)")
                    depth = 1
                    out.append('[')
                    i++
                    if (i < p.length && p[i] == '^') { out.append('^'); i++ }
                    if (i < p.length && p[i] == ']') bad("] first in a class")
                }
                ch == '(' -> {
                    if (p.startsWith("(?", i)) {
                        val rest = p.substring(i + 2)
                        val known = listOf(":", "=", "!", "<=", "<!", ">").firstOrNull { rest.startsWith(it) }
                        when {
                            known != null -> { groups.add(ci()); out.append("(?").append(known); i += 2 + known.length }
                            rest.startsWith("i:") -> { groups.add(true); out.append("(?:"); i += 4 }
                            else -> bad("(?${rest.take(3)}")
                        }
                    } else {
                        groups.add(ci())
                        out.append("(?:")   // capture groups change nothing for splitting
                        i++
                    }
                }
                ch == ')' -> {
                    if (groups.isEmpty()) bad("an unbalanced )")
                    groups.removeAt(groups.size - 1)
                    out.append(')')
                    i++
                }
                ch == '{' -> {
                    val m = Regex("^\\{(\\d*)(,?)(\\d*)\\}").find(p.substring(i))
                    if (m != null && (m.groupValues[1].isNotEmpty() || m.groupValues[3].isNotEmpty()) && i > 0) {
                        val (lo, comma, hi) = m.destructured
                        out.append('{').append(lo.ifEmpty { "0" }).append(comma).append(hi).append('}')
                        i += m.value.length
                        if (i < p.length && (p[i] == '?' || p[i] == '+')) { out.append(p[i]); i++ }
                    } else {
                        out.append("\\{")
                        i++
                    }
                }
                ch == '.' -> { out.append("[^\\n]"); i++ }
                ch == '^' || ch == '$' -> bad("anchor $ch")
                ch == '|' || ch == '*' || ch == '+' || ch == '?' -> { out.append(ch); i++ }
                else -> {
                    val cp = p.codePointAt(i)
                    literal(cp, out, ci(), false, ::bad)
                    i += Character.charCount(cp)
                }
            }
        }
        if (depth != 0) bad("an unclosed [")
        if (groups.isNotEmpty()) bad("an unclosed (")
        return out.toString()
    }

    private fun Char.isHex() = this in '0'..'9' || this in 'a'..'f' || this in 'A'..'F'

    /** A literal code point, escaped; in a case-insensitive group, a class of its case variants. */
    private fun literal(cp: Int, out: StringBuilder, ci: Boolean, inClass: Boolean, bad: (String) -> Nothing) {
        val variants = if (ci) caseVariants(cp, bad) else intArrayOf(cp)
        if (variants.size > 1) out.append('[')
        for (v in variants) {
            if (v < 0x80 && (Character.isLetterOrDigit(v) || v == ' '.code || v == '\''.code || v == '_'.code)) out.appendCodePoint(v)
            else out.append("\\x{").append(Integer.toHexString(v)).append('}')
        }
        if (variants.size > 1) out.append(']')
        if (inClass && variants.size > 1) bad("(?i:) inside a class")
    }

    /** Code points that Unicode simple case folding makes equal to an ASCII letter. */
    private fun caseVariants(cp: Int, bad: (String) -> Nothing): IntArray {
        if (cp >= 0x80) {
            if (Character.toLowerCase(cp) != cp || Character.toUpperCase(cp) != cp) bad("a non-ASCII letter inside (?i:)")
            return intArrayOf(cp)
        }
        val c = cp.toChar()
        if (c !in 'a'..'z' && c !in 'A'..'Z') return intArrayOf(cp)
        val lower = c.lowercaseChar().code
        val extra = when (lower) {
            's'.code -> intArrayOf(0x17F)    // LATIN SMALL LETTER LONG S
            'k'.code -> intArrayOf(0x212A)   // KELVIN SIGN
            else -> intArrayOf()
        }
        return intArrayOf(c.uppercaseChar().code, lower) + extra
    }
}

/** (a, b) -> (rank, merged id), open addressing on long keys. */
internal class MergeTable {
    private var keys = LongArray(1024) { EMPTY }
    private var ranks = IntArray(1024)
    private var ids = IntArray(1024)
    private var count = 0

    fun clear() {
        keys = LongArray(1024) { EMPTY }
        ranks = IntArray(1024)
        ids = IntArray(1024)
        count = 0
    }

    fun put(a: Int, b: Int, rank: Int, id: Int) {
        if ((count + 1) * 2 > keys.size) grow()
        val key = (a.toLong() shl 32) or b.toLong()
        var s = slot(key)
        while (keys[s] != EMPTY && keys[s] != key) s = (s + 1) and (keys.size - 1)
        if (keys[s] == EMPTY) count++
        keys[s] = key
        ranks[s] = rank
        ids[s] = id
    }

    /** Slot of (a, b), or -1. */
    fun find(a: Int, b: Int): Int {
        val key = (a.toLong() shl 32) or b.toLong()
        var s = slot(key)
        while (true) {
            val k = keys[s]
            if (k == key) return s
            if (k == EMPTY) return -1
            s = (s + 1) and (keys.size - 1)
        }
    }

    fun rank(a: Int, b: Int): Int {
        val s = find(a, b)
        return if (s < 0) -1 else ranks[s]
    }

    fun rankAt(slot: Int) = ranks[slot]
    fun idAt(slot: Int) = ids[slot]

    private fun slot(key: Long): Int {
        var h = key * -0x61c8864680b583ebL
        h = h xor (h ushr 29)
        return h.toInt() and (keys.size - 1)
    }

    private fun grow() {
        val oldKeys = keys
        val oldRanks = ranks
        val oldIds = ids
        keys = LongArray(oldKeys.size * 2) { EMPTY }
        ranks = IntArray(oldKeys.size * 2)
        ids = IntArray(oldKeys.size * 2)
        count = 0
        for (s in oldKeys.indices) {
            val k = oldKeys[s]
            if (k != EMPTY) put((k ushr 32).toInt(), k.toInt(), oldRanks[s], oldIds[s])
        }
    }

    private companion object {
        const val EMPTY = -1L   // ids are non-negative, so no key is -1
    }
}

/** A binary min-heap of longs. */
internal class LongHeap(capacity: Int) {
    private var a = LongArray(maxOf(capacity, 4))
    var size = 0
        private set

    fun push(v: Long) {
        if (size == a.size) a = a.copyOf(size * 2)
        var i = size++
        while (i > 0) {
            val parent = (i - 1) shr 1
            if (a[parent] <= v) break
            a[i] = a[parent]
            i = parent
        }
        a[i] = v
    }

    fun pop(): Long {
        val top = a[0]
        val last = a[--size]
        var i = 0
        while (true) {
            var c = 2 * i + 1
            if (c >= size) break
            if (c + 1 < size && a[c + 1] < a[c]) c++
            if (a[c] >= last) break
            a[i] = a[c]
            i = c
        }
        a[i] = last
        return top
    }
}

internal class IntList(capacity: Int) {
    var data = IntArray(maxOf(capacity, 4))
    var size = 0

    operator fun get(i: Int) = data[i]

    fun add(v: Int) {
        if (size == data.size) data = data.copyOf(size * 2)
        data[size++] = v
    }

    fun addAll(v: IntArray) {
        if (size + v.size > data.size) data = data.copyOf(maxOf(data.size * 2, size + v.size))
        System.arraycopy(v, 0, data, size, v.size)
        size += v.size
    }

    fun toArray(): IntArray = data.copyOf(size)
}

internal class ByteList(capacity: Int) {
    var data = ByteArray(maxOf(capacity, 16))
    var size = 0

    fun add(v: Byte) {
        if (size == data.size) data = data.copyOf(size * 2)
        data[size++] = v
    }

    fun addAll(v: ByteArray) {
        if (size + v.size > data.size) data = data.copyOf(maxOf(data.size * 2, size + v.size))
        System.arraycopy(v, 0, data, size, v.size)
        size += v.size
    }
}
