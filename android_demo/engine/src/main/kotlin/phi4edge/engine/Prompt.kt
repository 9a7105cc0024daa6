package phi4edge.engine

import com.google.gson.JsonParser
import java.io.File

/**
 * Phi-4's chat format, `<|system|>SYSTEM<|end|><|user|>USER<|end|><|assistant|>`, built directly
 * rather than by a Jinja engine (none is small and kept on both Android and the desktop JVM). The
 * bundle's template is checked to be Phi-4's at load; tests hold the ids to the Python runtime's,
 * which renders the template. Role markers are special tokens; message text is always encoded as
 * plain text, so nothing a user types becomes a control token.
 */
internal class ChatFormat(private val tokenizer: BpeTokenizer, bundle: Bundle) {
    private val end = tokenizer.tokenId("<|end|>")
    private val roles = listOf("system", "user").associateWith { tokenizer.tokenId("<|$it|>") }
    private val assistant = tokenizer.tokenId("<|assistant|>")

    init {
        val template = template(bundle)
            ?: throw BundleException("${bundle.dir}: the bundle has no chat template; the engine needs Phi-4's chat format")
        val marks = listOf("'<|' + message['role'] + '|>' + message['content']", "'<|end|>'", "'<|assistant|>'")
        if (marks.any { it !in template }) {
            throw BundleException("${bundle.dir}: the chat template is not Phi-4's (<|role|>content<|end|> ... <|assistant|>); " +
                "this engine implements only that format")
        }
    }

    /** Prompt ids for one user turn (and an optional system turn), with media placeholders. */
    fun encode(prompt: String, system: String?, media: List<Media>): IntArray {
        var text = prompt
        for (m in media) text = withPlaceholders(text, m)
        val ids = ArrayList<Int>()
        if (!system.isNullOrEmpty()) {
            ids.add(roles.getValue("system")); ids.addAll(content(system, emptyList()).asList()); ids.add(end)
        }
        ids.add(roles.getValue("user")); ids.addAll(content(text, media).asList()); ids.add(end)
        ids.add(assistant)
        return ids.toIntArray()
    }

    /** A kind of media in a request: its name in prompts ("image"), placeholder id and tokens per item. */
    class Media(val kind: String, val tokenId: Int, val counts: List<Int>)

    /** Text with each `<|kind_N|>` replaced by item N's placeholder ids; the rest plain text. */
    private fun content(text: String, media: List<Media>): IntArray {
        if (media.isEmpty()) return tokenizer.encode(text)
        val byKind = media.associateBy { it.kind }
        val pattern = Regex("<\\|(${media.joinToString("|") { it.kind }})_(\\d+)\\|>")
        val ids = ArrayList<Int>()
        var pos = 0
        for (m in pattern.findAll(text)) {
            if (m.range.first > pos) ids.addAll(tokenizer.encode(text.substring(pos, m.range.first)).asList())
            val kind = byKind.getValue(m.groupValues[1])
            repeat(kind.counts[m.groupValues[2].toInt() - 1]) { ids.add(kind.tokenId) }
            pos = m.range.last + 1
        }
        if (pos < text.length) ids.addAll(tokenizer.encode(text.substring(pos)).asList())
        return ids.toIntArray()
    }

    /** Check the prompt's `<|kind_N|>` references against the items; with none, put them first. */
    private fun withPlaceholders(text: String, m: Media): String {
        val used = Regex("<\\|${m.kind}_(\\d+)\\|>").findAll(text).map { it.groupValues[1].toBigInteger() }.toList()
        if (used.isEmpty()) return (1..m.counts.size).joinToString("") { "<|${m.kind}_$it|>" } + text
        if (used.sorted() != (1..m.counts.size).map { it.toBigInteger() }) {
            throw RequestException("the prompt refers to ${used.joinToString { "<|${m.kind}_$it|>" }} but ${m.counts.size} ${m.kind}" +
                "${if (m.counts.size != 1) "s were" else " was"} given: use each of <|${m.kind}_1|>..<|${m.kind}_${m.counts.size}|> once")
        }
        return text
    }

    companion object {
        /** chat_template.jinja if listed, else tokenizer_config.json's chat_template. */
        private fun template(bundle: Bundle): String? {
            val files = bundle.manifest.files
            if (Bundle.CHAT_TEMPLATE in files) return bundle.file(Bundle.CHAT_TEMPLATE).readText()
            if (Bundle.TOKENIZER_CONFIG !in files) return null
            val config = readJson(bundle.file(Bundle.TOKENIZER_CONFIG))
            val t = config.get("chat_template") ?: return null
            return when {
                t.isJsonPrimitive -> t.asString
                t.isJsonArray -> t.asJsonArray.firstOrNull { it.isJsonObject && it.asJsonObject.get("name")?.asString == "default" }
                    ?.asJsonObject?.get("template")?.asString
                else -> null
            }
        }

        private fun readJson(file: File) = try {
            JsonParser.parseString(file.readText()).asJsonObject
        } catch (e: Exception) {
            throw BundleException("$file: not a JSON object (${e.message})")
        }
    }
}
