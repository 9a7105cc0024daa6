package phi4edge.engine

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.nio.FloatBuffer
import java.util.Random

class SamplingTest {
    private val logits = FloatBuffer.wrap(FloatArray(5000).also { val r = Random(1); for (i in it.indices) it[i] = (r.nextGaussian() * 3).toFloat() }
        .also { it[17] = -0f; it[18] = 0f; it[19] = 0f; it[20] = Float.NEGATIVE_INFINITY; it[21] = -1e30f })

    @Test
    fun descendingOrderMatchesASortByValueThenId() {
        val want = (0 until 5000).sortedWith(compareByDescending<Int> { logits.get(it) }.thenBy { it }).toIntArray()
        assertArrayEquals(want, Sampler.descending(logits, 5000))
    }

    @Test
    fun seededSamplingRepeatsAndLowTemperatureIsGreedy() {
        val greedy = Sampler.argmax(logits, 5000)
        val draws = { seed: Long -> Sampler(1.0f, 0.9f, seed).let { s -> List(20) { s.next(logits, 5000) } } }
        assertEquals(draws(7), draws(7))
        assertTrue(draws(7).toSet().size > 1, "temperature 1 should vary")
        assertEquals(List(20) { greedy }, Sampler(1e-4f, 1f, 3).let { s -> List(20) { s.next(logits, 5000) } })
        assertEquals(List(20) { greedy }, Sampler(1f, 1e-6f, 3).let { s -> List(20) { s.next(logits, 5000) } })
    }
}
