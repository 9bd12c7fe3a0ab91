"""A fixed set of ordinary English text: the guard against forgetting.

A user's expert is trained on that user's conversations, and a LoRA adapter that
fits them well can still make the base model worse at everything else: it may
learn the user's topics at the cost of plain language. The fine-tune evaluation
gate therefore scores this set twice, under the base model alone and with the new
adapter, and refuses the adapter when its NLL here rises by more than 1%.

The passages were written for Tailor (no copied or copyrighted text) and are kept
fixed, so that scores from different runs can be compared. They are deliberately
unlike the personalisation data (news-wire reports on finance, politics and
companies): everyday and encyclopedic topics, in casual, formal and technical
registers, as letters, dialogue, instructions, reviews and stories. Each passage
is 60 to 120 words, long enough to carry context, short enough to score quickly.
Changing the set changes every gate's reference score: add to it, if ever,
only with that in mind.
"""

from __future__ import annotations

GENERIC_TEXTS: tuple[str, ...] = (
    # Cooking
    "To make a simple tomato sauce, warm two spoonfuls of olive oil in a wide pan "
    "over a medium flame. Add a chopped onion and a pinch of salt, and let it soften "
    "slowly for about ten minutes, stirring now and then so it does not brown. Stir "
    "in two crushed cloves of garlic for a minute, then pour in a tin of chopped "
    "tomatoes. Let the sauce bubble gently for twenty minutes until it thickens. "
    "Taste it, add a little sugar if it seems sharp, and finish with torn basil "
    "leaves just before serving.",
    # Weather
    "Clouds form when warm, moist air rises and cools. Cooler air cannot hold as "
    "much water vapour, so some of it condenses onto tiny specks of dust and salt, "
    "making droplets far too small to fall. Billions of these droplets together are "
    "what we see as a cloud. When the droplets bump into one another and merge, they "
    "grow heavier, and once they are large enough to overcome the rising air beneath "
    "them, they fall as rain. In colder clouds, ice crystals grow instead and may "
    "reach the ground as snow.",
    # History of bridges
    "The earliest bridges were probably fallen trees laid across streams. Later, "
    "people learned to stack flat stones into simple slabs and to weave ropes from "
    "vines into swaying walkways over deep gorges. The Romans built long stone arches "
    "held together by the weight of their own carefully cut blocks, and some of them "
    "still carry traffic today. Iron and then steel made much longer spans possible "
    "in the nineteenth century. Modern suspension bridges hang their decks from huge "
    "cables slung between tall towers, crossing wide rivers and bays in a single leap.",
    # How bicycles work
    "A bicycle turns the push of your legs into forward motion. When you press on the "
    "pedals, the cranks turn the front chainring, and the chain carries that motion "
    "to a smaller sprocket on the rear wheel. Because the rear sprocket is smaller, "
    "the wheel turns several times for each turn of the pedals. Gears let you change "
    "that ratio: a low gear makes hills easier but slow, while a high gear is fast on "
    "flat roads. Staying upright comes mostly from steering small corrections without "
    "thinking about it.",
    # Gardening
    "Spring is the best time to start a small vegetable bed. Choose a spot that gets "
    "at least six hours of sunlight a day and is not too far from a tap. Clear away "
    "weeds and loosen the soil with a fork, then dig in a generous layer of compost. "
    "Beginners do well with lettuce, radishes, beans and courgettes, which grow "
    "quickly and forgive mistakes. Water in the morning rather than the evening, so "
    "the leaves dry before night, and keep an eye out for slugs after rain.",
    # A letter to a friend
    "Dear Maria, I hope this finds you well and that the new flat is starting to feel "
    "like home. Things here are quiet. The garden has gone wild since you left, and I "
    "have finally learned to make bread that does not sink in the middle. I went to "
    "the lake last Sunday and thought of the summer we rented that leaky boat. Do you "
    "remember how we rowed in circles for an hour? Write when you can, and tell me "
    "everything about the city. With love, Anna.",
    # A short dialogue
    '"Are you sure this is the right way?" asked Tom, peering at the map. "Of '
    'course," said his sister. "The path follows the river until the old mill, '
    'then turns left up the hill." "But we passed a mill twenty minutes ago." She '
    'stopped walking. "That was a barn." "It had a water wheel." She took the map '
    'from him, turned it the right way up, and sighed. "Fine. We go back to the '
    'barn, which is a mill, and then we go left."',
    # Instructions: changing a tyre
    "To change a flat tyre on a car, first park on level ground away from traffic and "
    "switch on the hazard lights. Apply the handbrake firmly. Loosen the wheel nuts "
    "slightly with the wrench while the wheel is still on the ground. Place the jack "
    "at the lifting point shown in the handbook and raise the car until the tyre "
    "clears the road. Remove the nuts and the wheel, fit the spare, and tighten the "
    "nuts by hand. Lower the car, then tighten the nuts fully in a star pattern.",
    # Product review
    "I bought this kettle three months ago to replace one that had started to leak, "
    "and so far I am very happy with it. It boils a full litre in just under three "
    "minutes and is noticeably quieter than my old one. The water window is easy to "
    "read, and the lid opens wide enough to clean inside. My only complaint is that "
    "the handle gets a little warm near the top. For the price, though, it is "
    "excellent, and I would recommend it to anyone.",
    # Short story paragraph
    "The lighthouse keeper had not seen another person in eleven days when the small "
    "boat appeared on the horizon. At first he thought it was a trick of the light, "
    "the kind the sea often played at dusk. But it grew larger, rising and falling "
    "with the swell, and he could make out a single figure at the oars. He put on his "
    "coat, lit the lantern by the door, and walked down the steep steps to the "
    "landing, wondering who would row this far from anywhere.",
    # Basic science: photosynthesis
    "Plants make their own food through a process called photosynthesis. Inside their "
    "leaves are tiny structures called chloroplasts, which contain a green pigment "
    "that absorbs sunlight. Using that energy, the plant takes carbon dioxide from the "
    "air and water from the soil and combines them into sugar. Oxygen is released as "
    "a by-product, which is why forests and oceans full of algae are so important "
    "for the air we breathe. The sugar feeds the plant and is stored in roots, seeds "
    "and fruit.",
    # Travel
    "The train from the coast climbs slowly into the mountains, and the views are "
    "worth every minute of the five-hour journey. Sit on the left side for the best "
    "sight of the river gorge. The carriages are old but comfortable, and a trolley "
    "comes by with coffee and sandwiches. At the top, the little town has two hotels, "
    "a bakery that opens at six, and a path that leads to a waterfall in about an "
    "hour. Bring a warm jacket, even in summer, because evenings are cold.",
    # Sports: football basics
    "Football is played by two teams of eleven players on a rectangular field with a "
    "goal at each end. The aim is simple: get the ball into the other team's goal more "
    "often than they get it into yours. Only the goalkeeper may touch the ball with "
    "the hands, and only inside the penalty area. Everyone else uses feet, head or "
    "chest. A match lasts ninety minutes, split into two halves, and a referee keeps "
    "order, awarding free kicks for fouls and showing cards for serious offences.",
    # Music theory
    "A musical scale is a set of notes arranged in order of pitch. The major scale, "
    "which many people know from singing do, re, mi, follows a pattern of whole steps "
    "and half steps that gives it a bright, settled sound. The minor scale changes "
    "a few of those steps and sounds darker or more wistful. Chords are built by "
    "stacking notes from a scale, usually every other note. A song in a major key "
    "tends to return to its home chord at the end, which is why it feels finished.",
    # Casual message
    "hey! so sorry I missed your call earlier, my phone was on silent all afternoon "
    "and I only just saw it. are we still on for saturday? I was thinking we could "
    "grab lunch at that place by the park first and then walk over to the market. "
    "also, do you still have my blue umbrella? no rush, just wondering where it went. "
    "let me know what time works for you and I'll sort out the tickets tonight.",
    # Formal notice
    "Residents are kindly reminded that the main water supply to the building will be "
    "interrupted on Thursday between nine in the morning and two in the afternoon "
    "while maintenance work is carried out on the pipes in the basement. We recommend "
    "filling a few containers in advance for drinking and cooking. Lifts will continue "
    "to operate as normal. We apologise for any inconvenience this may cause and "
    "thank you for your patience. Questions may be directed to the caretaker's office "
    "on the ground floor.",
    # Technical: how a hash table works
    "A hash table stores values so that each one can be found in roughly constant "
    "time. It keeps an array of slots and a hash function that turns each key into a "
    "number, which is reduced to an index into the array. To insert a pair, the table "
    "computes the index and places the value there. Two keys may land on the same "
    "slot, a collision, which is handled either by keeping a short list in each slot "
    "or by probing for the next free one. When the table fills up, it grows and "
    "rehashes.",
    # Astronomy
    "The Moon does not make its own light; it shines because it reflects sunlight. As "
    "it travels around the Earth, about once every twenty-nine and a half days, we "
    "see different amounts of its sunlit half. When the Moon lies between us and the "
    "Sun, the lit side faces away and we call it a new moon. A week later we see half "
    "of it, then the full disc when it is on the far side of the Earth, before it "
    "shrinks back again.",
    # Baking bread
    "Bread needs only flour, water, salt and yeast, but patience matters just as "
    "much. Mix the ingredients into a shaggy dough, then knead it on a floured table "
    "for about ten minutes, until it feels smooth and springs back when pressed. "
    "Leave it covered in a warm place until it doubles in size. Shape it gently into "
    "a round loaf, let it rise again for half an hour, and bake it in a hot oven. "
    "Tap the bottom: a hollow sound means it is done.",
    # Animals: octopus
    "The octopus is one of the cleverest animals in the sea. It has eight flexible "
    "arms lined with suckers that can taste as well as grip, and it can squeeze its "
    "soft body through any gap larger than its beak. Many octopuses change the colour "
    "and texture of their skin in an instant to blend with rocks or coral. In "
    "aquariums they have been seen opening jars, escaping their tanks at night, and "
    "recognising individual keepers. Most species live only a year or two.",
    # Home repair: dripping tap
    "A dripping tap usually means a worn washer or cartridge. Before starting, turn "
    "off the water supply under the sink and open the tap to drain what is left in "
    "the pipe. Put the plug in so small parts cannot fall down the drain. Prise off "
    "the decorative cap, undo the screw beneath it, and lift out the handle. Unscrew "
    "the valve with a spanner and take it to a hardware shop to find a matching "
    "washer. Reassemble everything in reverse order and turn the water back on.",
    # Health and sleep
    "Most adults need between seven and nine hours of sleep a night, though the exact "
    "amount varies from person to person. Going to bed and getting up at the same "
    "time every day, even at weekends, helps the body's internal clock stay steady. "
    "Bright screens late in the evening can make it harder to fall asleep, as can "
    "coffee taken after lunch. A cool, dark and quiet bedroom helps. If you cannot "
    "sleep after twenty minutes, getting up to read for a while often works better "
    "than lying awake.",
    # Geography: rivers
    "Every river begins somewhere high, often as a spring, a melting glacier or a "
    "small stream fed by rain on a hillside. As it flows downhill it gathers water "
    "from smaller streams, called tributaries, and grows wider and deeper. In its "
    "upper course it runs fast and cuts steep valleys; lower down it slows, winds "
    "across flat land in loops called meanders, and drops the sand and mud it has "
    "carried. Where it finally meets the sea, it may spread into a broad, marshy "
    "delta.",
    # Children's story
    "Once upon a time, in a village at the edge of a great forest, there lived a "
    "small hedgehog named Pip who was afraid of the dark. Every evening, when the sun "
    "slipped behind the hills, Pip curled into a tight ball beneath the woodpile and "
    'waited for morning. One night a firefly landed on his nose. "Why are you '
    'hiding?" it asked. "Because I cannot see," said Pip. "Then follow me," said '
    'the firefly, "and I will show you what the night is for."',
    # Physics: why the sky is blue
    "Sunlight looks white, but it is a mixture of all the colours of the rainbow. "
    "When it passes through the air, it meets countless tiny gas molecules that "
    "scatter some of the light in every direction. Shorter wavelengths, at the blue "
    "end of the spectrum, are scattered much more strongly than longer red ones. So "
    "wherever we look in the sky, away from the Sun, we see this scattered blue "
    "light. At sunset the light crosses far more air, the blue is scattered away, and "
    "reds remain.",
    # Hobby: knitting
    "Learning to knit takes a little patience, but the basics can be picked up in an "
    "afternoon. Start with thick yarn in a pale colour, so the stitches are easy to "
    "see, and a pair of medium needles. The first step is casting on, which puts a "
    "row of loops onto one needle. The knit stitch, repeated row after row, produces "
    "a bumpy fabric called garter stitch, which is perfect for a first scarf. Do not "
    "worry about uneven tension at first; it improves with practice.",
    # Formal invitation
    "The members of the Riverside Choir request the pleasure of your company at their "
    "annual spring concert, to be held in the town hall on the evening of Saturday "
    "the twelfth of April. The programme will include choral works from several "
    "centuries, together with a selection of folk songs arranged for the occasion. "
    "Doors will open at half past six, and the performance will begin at seven. "
    "Light refreshments will be served during the interval. Kindly reply by the end "
    "of March.",
    # Technical: how email reaches its destination
    "When you send an email, your mail program hands the message to an outgoing mail "
    "server. That server looks at the part of the address after the at sign and asks "
    "the domain name system which machine accepts mail for that domain. It then "
    "connects to that machine and passes the message along, following a simple text "
    "protocol of commands and replies. The receiving server stores the message in "
    "the recipient's mailbox, where it waits until their own program fetches it, "
    "often within a few seconds.",
    # Hiking advice
    "Before setting out on a day hike, check the weather forecast and tell someone "
    "where you are going and when you expect to be back. Wear boots that you have "
    "already broken in, and dress in layers that you can add or remove as the day "
    "warms up. Carry more water than you think you will need, a map, a small first "
    "aid kit and something to eat. Turn back if the weather changes or you fall far "
    "behind schedule: the mountain will still be there next week.",
    # Mathematics: prime numbers
    "A prime number is a whole number greater than one that can be divided evenly "
    "only by one and by itself. The first few are two, three, five, seven and eleven. "
    "Two is the only even prime, since every other even number can be divided by two. "
    "More than two thousand years ago, a Greek mathematician showed that there is no "
    "largest prime: however far you count, more primes keep appearing. Every whole "
    "number above one can be written as a product of primes in exactly one way.",
    # Tennis
    "Tennis scoring puzzles many newcomers. A game is won by the first player to win "
    "four points, but the points are called fifteen, thirty, forty and game, and zero "
    "is called love. If both players reach forty, the score is deuce, and one of them "
    "must then win two points in a row. Six games usually win a set, though the "
    "winner must be at least two games ahead, and a tie break decides a set that "
    "reaches six games all. Matches are best of three or five sets.",
    # Music: learning an instrument
    "Picking up an instrument as an adult is easier than many people fear. The most "
    "important habit is short, regular practice: fifteen minutes every day does far "
    "more than two hours once a week. Start each session slowly, playing scales or "
    "simple exercises to warm up your fingers, and then work on a piece you enjoy. "
    "Record yourself from time to time, because it is hard to hear your own playing "
    "clearly while you are busy making it. A good teacher will save you months.",
    # Everyday history: the printing press
    "Before printing with movable type, books in Europe were copied by hand, a slow "
    "and costly task that could take a scribe many months for a single volume. In "
    "the fifteenth century, printers began casting individual letters in metal that "
    "could be arranged into pages, inked, and pressed onto paper again and again. "
    "Books became cheaper and far more common, more people learned to read, and "
    "ideas spread faster than ever before. Similar techniques had been used even "
    "earlier in East Asia.",
    # Pets
    "Bringing a new cat home can be stressful for the animal, so it helps to prepare "
    "a quiet room before it arrives. Put food, water, a litter tray and somewhere "
    "snug to hide in that room, with the tray well away from the food. Let the cat "
    "explore at its own pace and do not force it to be held. After a few days, when "
    "it seems relaxed, open the door and let it discover the rest of the house. "
    "Most cats settle in within a couple of weeks.",
    # Diary entry
    "Tuesday. Woke early to the sound of rain on the roof and decided to stay in bed "
    "a little longer than usual. By the time I got up, the kitchen was full of grey "
    "light and the cat was sulking by her empty bowl. Spent the morning sorting old "
    "photographs into albums, which took much longer than planned because every "
    "picture started a memory. In the afternoon the sky cleared, so I walked to the "
    "library and came home with far too many books.",
    # Chemistry: states of matter
    "Matter is usually found in one of three states: solid, liquid or gas. In a "
    "solid, the particles are packed tightly and only vibrate in place, so the "
    "material keeps its shape. In a liquid, they are still close together but can "
    "slide past one another, which is why a liquid takes the shape of its container. "
    "In a gas, the particles move freely and spread out to fill any space. Heating "
    "or cooling a substance can change it from one state to another.",
    # Recipe: pancakes
    "For a dozen thin pancakes, whisk two eggs with a pinch of salt, then gradually "
    "beat in a cup of plain flour and a cup and a half of milk until the batter is "
    "smooth and about as thick as single cream. Leave it to rest for half an hour. "
    "Heat a little butter in a frying pan, pour in just enough batter to coat the "
    "base, and tilt the pan to spread it. Cook for a minute, flip it over, and serve "
    "with lemon and sugar.",
    # Technical: version control
    "Version control keeps a history of every change made to a set of files. Each "
    "time a developer saves a meaningful step, called a commit, the system records "
    "what changed, who changed it, and a short message explaining why. Branches let "
    "several people work on different features at once without disturbing each "
    "other, and merging brings their work back together. If a change turns out to be "
    "a mistake, it can be undone by returning to an earlier commit, so experiments "
    "carry little risk.",
    # Museum guide, formal
    "Welcome to the east gallery, which is devoted to everyday objects from rural "
    "life over the past three centuries. On your left you will see a collection of "
    "hand tools used for ploughing, harvesting and threshing grain, many of them "
    "made by local blacksmiths. The cabinet in the centre holds kitchen utensils, "
    "including a rare copper pot from a farmhouse on the hill above the village. "
    "Please do not touch the exhibits, and note that photography with a flash is not "
    "permitted.",
    # Short story paragraph: the market
    "By the time Leo reached the market, most of the stalls were already packing up. "
    "The fish seller was hosing down his counter, and a woman with a basket of "
    "oranges was arguing cheerfully with a man over the last few loaves of bread. "
    "Leo had promised his grandmother he would bring back fresh herbs, but the herb "
    "stall was gone, leaving only a square of damp cardboard. He stood there for a "
    "moment, then noticed a small boy holding out a bunch of mint.",
)


def generic_texts() -> list[str]:
    """The generic passages, as a new list the caller may change."""
    return list(GENERIC_TEXTS)
