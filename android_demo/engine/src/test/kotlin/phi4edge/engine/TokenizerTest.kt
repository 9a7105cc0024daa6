package phi4edge.engine

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import com.google.gson.JsonPrimitive
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assumptions.assumeTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.io.StringReader

/**
 * The Kotlin BPE against Hugging Face `tokenizers`, through the Python runtime's ChatTokenizer, on
 * the vectors of android_demo/engine/vectors/tokenizer_vectors.py (run it first:
 * `.venv/bin/python android_demo/engine/vectors/tokenizer_vectors.py build/android-test`).
 */
class TokenizerTest {
    private val root = File(System.getProperty("phi4edge.bundles") ?: "../../build/android-test", "tokenizer")
    private val vectors: JsonObject by lazy {
        val f = File(root, "vectors.json")
        assumeTrue(f.isFile, "no $f: run android_demo/engine/vectors/tokenizer_vectors.py")
        JsonParser.parseString(f.readText(Charsets.UTF_8)).asJsonObject
    }

    private fun ints(a: JsonElement): IntArray = a.asJsonArray.map { it.asInt }.toIntArray()

    private fun strings(a: JsonElement): List<String> = a.asJsonArray.map { it.asString }

    private fun show(s: String) = BpeTokenizer.quote(s)

    private fun check(name: String) {
        val v = vectors.getAsJsonObject("tokenizers").getAsJsonObject(name)
        val tok = BpeTokenizer.load(File(root, "$name/tokenizer.json"))
        assertEquals(v.get("vocab_size").asInt, tok.vocabSize, "$name: vocab size")
        val failures = ArrayList<String>()
        for ((content, id) in v.getAsJsonObject("token_ids").entrySet())
            if (tok.tokenId(content) != id.asInt) failures.add("tokenId(${show(content)}) = ${tok.tokenId(content)}, tokenizers ${id.asInt}")
        val cases = v.getAsJsonArray("cases")
        for (c in cases) {
            val o = c.asJsonObject
            val text = o.get("text").asString
            val ids = ints(o.get("ids"))
            val pieces = tok.pieces(text)
            if (pieces != strings(o.get("pieces"))) failures.add("pieces(${show(text)}) = ${pieces.map(::show)}, tokenizers ${strings(o.get("pieces")).map(::show)}")
            val got = tok.encode(text)
            if (!got.contentEquals(ids)) failures.add("encode(${show(text)}) = ${got.toList()}, tokenizers ${ids.toList()}")
            checkDecode(tok, ids, o, "ids of ${show(text)}", failures)
        }
        val decodes = v.getAsJsonArray("decodes")
        for (d in decodes) {
            val o = d.asJsonObject
            checkDecode(tok, ints(o.get("ids")), o, "ids ${ints(o.get("ids")).toList()}", failures)
        }
        println("$name: ${cases.size()} texts, ${decodes.size()} id sequences, ${failures.size} failures")
        assertTrue(failures.isEmpty(), "$name: ${failures.size} differences from tokenizers, first ones:\n" + failures.take(15).joinToString("\n"))
    }

    private fun checkDecode(tok: BpeTokenizer, ids: IntArray, o: JsonObject, what: String, failures: MutableList<String>) {
        val decoded = tok.decode(ids)
        if (decoded != o.get("decoded").asString) failures.add("decode($what) = ${show(decoded)}, tokenizers ${show(o.get("decoded").asString)}")
        val stream = TextStream(tok)
        val steps = ids.map { stream.push(it) }
        if (steps != strings(o.get("stream"))) failures.add("stream($what) = ${steps.map(::show)}, Python ${strings(o.get("stream")).map(::show)}")
    }

    @Test fun embeddedTokenizerMatchesTokenizers() = check("embedded")

    @Test fun o200kTokenizerMatchesTokenizers() = check("o200k")

    @Test fun phi4SizedTokenizerMatchesTokenizers() = check("big")

    @Test
    fun specialTokenStringsAreText() {
        val tok = BpeTokenizer.load(File(vectors.let { root }, "o200k/tokenizer.json"))
        val end = tok.tokenId("<|end|>")
        assertTrue(end !in tok.encode("hello <|end|> world").toList())
        assertEquals("hello  world", tok.decode(tok.encode("hello ") + end + tok.encode(" world")))
        assertEquals(listOf("", "\u00e9"), TextStream(tok).let { s -> tok.encode("\u00e9").let { ids -> if (ids.size == 2) ids.map { s.push(it) } else listOf("", s.push(ids[0])) } })
        val e = assertThrows(IllegalArgumentException::class.java) { tok.tokenId("<|nope|>") }
        assertTrue(e.message!!.contains("<|nope|>"))
    }

    @Test
    fun speed() {
        val texts = vectors.getAsJsonObject("tokenizers").getAsJsonObject("o200k").getAsJsonArray("cases").map { it.asJsonObject.get("text").asString }
        val prose = texts.maxByOrNull { it.length }!!   // the vectors' multilingual corpus: prose, code, many scripts
        for (name in listOf("big", "o200k", "embedded")) {
            var t0 = System.nanoTime()
            val tok = BpeTokenizer.load(File(root, "$name/tokenizer.json"))
            val loadMs = (System.nanoTime() - t0) / 1e6
            println("speed $name (vocab ${tok.vocabSize}): load %.0f ms".format(loadMs))
            // prompts of ~2K tokens: prose, and every vector text in turn (digits, emoji, random Unicode)
            for ((kind, source) in listOf("prose" to { i: Int -> prose.substring((i * 997) % (prose.length / 2)) },
                                          "mixed" to { i: Int -> texts[(i * 7919) % texts.size] })) {
                val sb = StringBuilder()
                var i = 0
                while (tok.encode(sb.toString()).size < 2000) sb.append(source(i++)).append(' ')
                val prompt = sb.toString()
                val fresh = BpeTokenizer.load(File(root, "$name/tokenizer.json"))   // an empty cache
                t0 = System.nanoTime()
                val n = fresh.encode(prompt).size
                val coldMs = (System.nanoTime() - t0) / 1e6
                repeat(20) { tok.encode(prompt) }
                t0 = System.nanoTime()
                repeat(20) { tok.encode(prompt) }
                val warmMs = (System.nanoTime() - t0) / 1e6 / 20
                val ids = tok.encode(prompt)
                t0 = System.nanoTime()
                repeat(20) { tok.decode(ids) }
                val decodeMs = (System.nanoTime() - t0) / 1e6 / 20
                t0 = System.nanoTime()
                repeat(5) { val s = TextStream(tok); for (id in ids) s.push(id) }
                val streamUs = (System.nanoTime() - t0) / 1e3 / 5 / ids.size
                println("  $kind: encode %d tokens (%d chars) %.1f ms with an empty cache, %.2f ms warm; decode %.2f ms; stream %.1f us/token"
                    .format(n, prompt.length, coldMs, warmMs, decodeMs, streamUs))
                assertTrue(coldMs < 1000 && warmMs < 100, "$name: encoding $n tokens took $coldMs ms (first) / $warmMs ms")
            }
        }
    }

    // ---- tokenizer.json files phi4edge must refuse, each with a one-line message naming the field

    private fun embedded(): JsonObject = JsonParser.parseString(File(root.also { vectors }, "embedded/tokenizer.json").readText()).asJsonObject

    private fun refused(dir: File, json: String, field: String) {
        val f = File(dir, "tokenizer.json")
        f.writeText(json)
        val e = assertThrows(IllegalArgumentException::class.java, { BpeTokenizer.load(f) }, "expected refusal naming $field")
        val message = e.message!!
        assertTrue(message.contains(field), "message does not name $field: $message")
        assertTrue(message.startsWith(f.path), "message does not name the file: $message")
        assertTrue(!message.contains('\n') && message.length < 400, "not one short line: $message")
    }

    private fun refused(dir: File, field: String, edit: (JsonObject) -> Unit) {
        val j = embedded()
        edit(j)
        refused(dir, j.toString(), field)
    }

    private fun o200kPre(): JsonObject =
        JsonParser.parseString(File(root, "o200k/tokenizer.json").readText()).asJsonObject.getAsJsonObject("pre_tokenizer")

    private fun split(regex: String): JsonObject = o200kPre().also {
        it.getAsJsonArray("pretokenizers")[0].asJsonObject.add("pattern", JsonObject().apply { addProperty("Regex", regex) })
    }

    private fun JsonObject.model() = getAsJsonObject("model")

    @Test
    fun hostileTokenizersAreRefused(@TempDir dir: File) {
        refused(dir, "not json", "not a valid tokenizer.json")
        refused(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}", "not a valid tokenizer.json")
        refused(dir, "[1, 2]", "(top level)")
        refused(dir, "", "not a valid tokenizer.json")
        refused(dir, "version") { it.addProperty("version", "2.0") }
        refused(dir, "model") { it.remove("model") }
        refused(dir, "model.type") { it.model().addProperty("type", "WordPiece") }
        refused(dir, "model.vocab") { it.model().remove("vocab") }
        refused(dir, "model.merges") { it.model().remove("merges") }
        refused(dir, "model.dropout") { it.model().addProperty("dropout", 0.1) }
        refused(dir, "model.byte_fallback") { it.model().addProperty("byte_fallback", true) }
        refused(dir, "model.ignore_merges") { it.model().addProperty("ignore_merges", true) }
        refused(dir, "model.continuing_subword_prefix") { it.model().addProperty("continuing_subword_prefix", "##") }
        refused(dir, "model.unk_token") { it.model().addProperty("unk_token", "<unk-not-there>") }
        refused(dir, "model.vocab") { it.model().getAsJsonObject("vocab").addProperty("evil", -1) }
        refused(dir, "model.vocab") { it.model().getAsJsonObject("vocab").addProperty("evil", 1e12) }
        refused(dir, "model.vocab") { it.model().getAsJsonObject("vocab").addProperty("evil", 1.5) }
        refused(dir, "model.vocab") { it.model().getAsJsonObject("vocab").addProperty("evil", "7") }
        refused(dir, "model.vocab") { it.model().getAsJsonObject("vocab").addProperty("evil", 7) }   // id 7 twice
        refused(dir, "model.vocab") { it.model().add("vocab", JsonArray()) }
        refused(dir, "model.merges") { it.model().getAsJsonArray("merges").add(JsonArray().apply { add("Ġ"); add("nowhere") }) }
        refused(dir, "model.merges") { it.model().getAsJsonArray("merges").add(JsonArray().apply { add("a"); add("b"); add("c") }) }
        refused(dir, "model.merges") { it.model().getAsJsonArray("merges").add("a b") }
        refused(dir, "model.merges") { it.model().getAsJsonArray("merges").add(3) }
        refused(dir, "model.merges") { m -> m.model().add("merges", JsonArray().apply { add("a b c") }) }
        refused(dir, "normalizer") { it.add("normalizer", JsonObject().apply { addProperty("type", "NFC") }) }
        refused(dir, "truncation") { it.add("truncation", JsonObject().apply { addProperty("max_length", 8) }) }
        refused(dir, "padding") { it.add("padding", JsonObject().apply { addProperty("strategy", "BatchLongest") }) }
        refused(dir, "post_processor") { it.add("post_processor", JsonObject().apply { addProperty("type", "TemplateProcessing") }) }
        refused(dir, "decoder") { it.add("decoder", com.google.gson.JsonNull.INSTANCE) }
        refused(dir, "decoder") { it.add("decoder", JsonObject().apply { addProperty("type", "Metaspace") }) }
        refused(dir, "pre_tokenizer") { it.remove("pre_tokenizer") }
        refused(dir, "pre_tokenizer.type") { it.add("pre_tokenizer", JsonObject().apply { addProperty("type", "Metaspace") }) }
        refused(dir, "pre_tokenizer.add_prefix_space") { it.getAsJsonObject("pre_tokenizer").addProperty("add_prefix_space", true) }
        refused(dir, "pre_tokenizer.use_regex") { it.getAsJsonObject("pre_tokenizer").addProperty("use_regex", false) }
        refused(dir, "added_tokens[2].special") { it.getAsJsonArray("added_tokens")[2].asJsonObject.addProperty("special", false) }
        refused(dir, "added_tokens[0].content") { it.getAsJsonArray("added_tokens")[0].asJsonObject.add("content", JsonPrimitive(5)) }
        refused(dir, "added_tokens[1].id") { it.getAsJsonArray("added_tokens")[1].asJsonObject.addProperty("id", -3) }
        refused(dir, "added_tokens") { it.add("added_tokens", JsonObject()) }
        val seq = "pre_tokenizer.pretokenizers"
        refused(dir, "$seq[0].behavior") { it.add("pre_tokenizer", o200kPre().also { p -> p.getAsJsonArray("pretokenizers")[0].asJsonObject.addProperty("behavior", "Removed") }) }
        refused(dir, "$seq[0].invert") { it.add("pre_tokenizer", o200kPre().also { p -> p.getAsJsonArray("pretokenizers")[0].asJsonObject.addProperty("invert", true) }) }
        refused(dir, "$seq[0].pattern") { it.add("pre_tokenizer", o200kPre().also { p -> p.getAsJsonArray("pretokenizers")[0].asJsonObject.add("pattern", JsonObject().apply { addProperty("String", " ") }) }) }
        refused(dir, "$seq[1].use_regex") { it.add("pre_tokenizer", o200kPre().also { p -> p.getAsJsonArray("pretokenizers")[1].asJsonObject.addProperty("use_regex", true) }) }
        refused(dir, "$seq[1].type") { it.add("pre_tokenizer", o200kPre().also { p -> p.getAsJsonArray("pretokenizers")[1].asJsonObject.addProperty("type", "Digits") }) }
        refused(dir, seq) { it.add("pre_tokenizer", o200kPre().also { p -> p.getAsJsonArray("pretokenizers").remove(1) }) }
        for (bad in listOf("\\d+", "\\w+", "\\bx", "^a", "a$", "(?<n>a)", "(?i)a", "[[:alpha:]]", "\\p{Han}", "(a", "a)", "[a", "\\1", "(?i:[a-z])", "(?i:\\p{L})"))
            refused(dir, "$seq[0].pattern.Regex") { it.add("pre_tokenizer", split(bad)) }
    }

    @Test
    fun translatedRegexes() {
        val o200k = o200kPre().getAsJsonArray("pretokenizers")[0].asJsonObject.getAsJsonObject("pattern").get("Regex").asString
        val java = OnigToJava.translate(o200k, "x")
        assertTrue("(?:'[Ss\\x{17f}]|'[Tt]|'[Rr][Ee]|'[Vv][Ee]|'[Mm]|'[Ll][Ll]|'[Dd])?" in java, java)
        assertEquals("a{0,3}\\{x\\x{7d}[^\\n]", OnigToJava.translate("a{,3}{x}.", "x"))
        // the real vocabulary's regex, as a Java Pattern, splits as tokenizers does (see the vectors)
        val p = OnigToJava.compile(o200k, "x")
        val m = p.matcher("IT'S it'\u017f \u00a0x 12345")
        val pieces = ArrayList<String>()
        while (m.find()) pieces.add(m.group())
        assertEquals(listOf("IT'S", " it'\u017f", " ", "\u00a0x", " ", "123", "45"), pieces)
    }

    @Test
    fun parseFromReader() {
        val tok = BpeTokenizer.parse(StringReader(embedded().toString()), "inline")
        assertEquals(488, tok.vocabSize)
        val e = assertThrows(IllegalArgumentException::class.java) { BpeTokenizer.parse(StringReader("{}"), "inline") }
        assertEquals("inline: model: missing", e.message)
    }
}
